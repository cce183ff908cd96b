"""The training-dynamics step (`[training_dynamics]`): the run's seeds compared again at each checkpoint
the trainer kept, or (pretrained family runs) at each step of the listed checkpoint directories
(`listed_checkpoints`), by `dynamics.universality_over_training`, one pass per checkpoint, after the
compare step.

| table                                 | one row per                      | columns (`dynamics._over_training`)   |
|---------------------------------------|----------------------------------|---------------------------------------|
| tables/training_universality.parquet  | (step, model, unit_set)          | the layer summary: pct_universal ...  |
| tables/training_units.parquet         | (model, unit_set, unit)          | first_universal_step, stays_universal |
| tables/training_persistence.parquet   | (step, model, unit_set)          | share of the final universal units    |
| tables/training_cka.parquet           | (model, unit_set, step, relation) | CKA to the next and the final checkpoint |

Its fingerprint is the trained models' with the steps and the compare settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pandas as pd
from torch import nn

from .._rundir import fingerprint
from ..config import CompareConfig, FamilyTrainingDynamicsConfig, TrainingDynamicsConfig
from ..dynamics import universality_over_training
from ..errors import UniversalityError, short_repr
from ._steps import table_step

__all__ = ["check_dynamics_steps", "training_dynamics_step", "listed_checkpoints"]


def check_dynamics_steps(settings: TrainingDynamicsConfig, planned: list[int], unit: str = "step",
                         kept_by: str = "the trainer keeps", fix: str = "raise train.checkpoints") -> None:
    """One line when `settings.checkpoints` lists a step that is not kept (`planned`), or fewer than 2 are."""
    if settings.enabled and settings.checkpoints != "all":
        missing = sorted(set(settings.checkpoints) - set(planned))
        if missing:
            raise UniversalityError(f"training_dynamics.checkpoints: {unit} {missing[0]} is not a checkpoint; "
                                    f"{kept_by} {unit}s {planned}: list some of those, or \"all\"")
    if settings.enabled and len(planned) < 2:
        raise UniversalityError(f"training_dynamics needs at least 2 checkpoints, {kept_by} {planned}; {fix}")


def listed_checkpoints(settings: FamilyTrainingDynamicsConfig, names: dict[str, str],
                       layouts: dict[str, dict[str, int]], load: Callable[[str], object]) -> dict[str, dict[int, str]]:
    """{run name of the model: {step: directory}} of the listed series, checked before anything is written:
    each checkpoint, loaded once (`load(directory) -> adapter`) and let go, has its model's unit sets
    and sizes (`layouts` {run name: {unit_set: units}}), and the chosen steps are listed by every series.
    `names`: {model as written in the config: its run name}."""
    if not settings.enabled:
        return {}
    series = {names[s.model]: dict(zip(s.steps, s.directories)) for s in settings.seeds}
    for model, by_step in series.items():
        wanted = layouts[model]
        for step, directory in by_step.items():
            units = load(directory).unit_sets
            found = {name: units[name] for name in wanted if name in units}
            if found != wanted:
                raise UniversalityError(
                    f"training_dynamics: checkpoint {short_repr(directory)} (step {step} of {model}) has unit sets "
                    f"{short_repr(found)}, {model} has {short_repr(wanted)}: checkpoints of different architectures "
                    f"cannot be compared over training; list checkpoints of {model}'s architecture")
    shared = sorted(set.intersection(*(set(by_step) for by_step in series.values())))
    check_dynamics_steps(settings, shared, kept_by="the listed series share",
                         fix="list checkpoints of the same steps for every model")
    return series


def training_dynamics_step(tables_dir, settings: TrainingDynamicsConfig,
                           checkpoints: dict[str, dict[int, nn.Module | str]],
                           stream: Callable[[dict[str, nn.Module | str]], Iterable], *, compare: CompareConfig,
                           models_print: dict) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The step's tables (module docstring) and notes; ({}, [note]) when fewer than 2 chosen steps were
    kept by every seed (an early stop ends a seed before the later planned checkpoints).

    checkpoints : {model: {step: the model at that step (a module, or a directory `stream` loads)}}
    stream : {model: what `checkpoints` holds at one step} -> a fresh iterable of
        {model: {unit_set: Tensor[tokens, units]}} batches
    """
    kept = sorted(set.intersection(*(set(steps) for steps in checkpoints.values())))
    steps = kept if settings.checkpoints == "all" else [s for s in settings.checkpoints if s in kept]
    if len(steps) < 2:
        return {}, [f"universality over training left out: the seeds share the checkpoints {kept}, of which "
                    f"{steps} were asked for; it needs 2"]
    step_print = fingerprint(models=models_print, steps=steps, compare=compare.model_dump())

    def compute():
        batches = {step: (lambda step=step: stream({m: by_step[step] for m, by_step in checkpoints.items()}))
                   for step in steps}
        result = universality_over_training(batches, threshold=compare.threshold, rotations=compare.rotations,
                                            seed=compare.seed, dtype=compare.accumulate)
        return {"training_universality": result.layers, "training_units": result.units,
                "training_persistence": result.persistence, "training_cka": result.cka}
    return table_step(tables_dir, "training", step_print, compute, settings={"steps": steps}), []
