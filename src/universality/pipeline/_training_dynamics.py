"""The training-dynamics step (`[training_dynamics]`): the run's seeds compared again at each checkpoint
the trainer kept (`dynamics.universality_over_training`, one pass per checkpoint), after the compare step.

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
from ..config import CompareConfig, TrainingDynamicsConfig
from ..dynamics import universality_over_training
from ..errors import UniversalityError
from ._steps import table_step

__all__ = ["check_dynamics_steps", "training_dynamics_step"]


def check_dynamics_steps(settings: TrainingDynamicsConfig, planned: list[int], unit: str = "step") -> None:
    """One line when `settings.checkpoints` lists a step the trainer does not keep (`planned`)."""
    if settings.enabled and settings.checkpoints != "all":
        missing = sorted(set(settings.checkpoints) - set(planned))
        if missing:
            raise UniversalityError(f"training_dynamics.checkpoints: {unit} {missing[0]} is not a checkpoint; the "
                                    f"trainer keeps {unit}s {planned}: list some of those, or \"all\"")
    if settings.enabled and len(planned) < 2:
        raise UniversalityError(f"training_dynamics needs at least 2 checkpoints, the trainer keeps {planned}; "
                                "raise train.checkpoints")


def training_dynamics_step(tables_dir, settings: TrainingDynamicsConfig, checkpoints: dict[str, dict[int, nn.Module]],
                           stream: Callable[[dict[str, nn.Module]], Iterable], *, compare: CompareConfig,
                           models_print: dict) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The step's tables (module docstring) and notes; ({}, [note]) when fewer than 2 chosen steps were
    kept by every seed (an early stop ends a seed before the later planned checkpoints).

    checkpoints : {model: {step: model at that step}}
    stream : {model: module} -> a fresh iterable of {model: {unit_set: Tensor[tokens, units]}} batches
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
