"""Universality over training: the same comparison at every checkpoint of the same models.

Input: per checkpoint step, the activation batches of every model at that step over the same tokens
(the same models and unit sets at every step: a unit is (model, unit_set, unit) at every step).
Each step is streamed once: its batches go to `compare_activations` while, in the same loop, the
batches of the next and of the final checkpoint (same tokens) feed per-model moment accumulators
from which `similarity.linear_cka` gives the CKA of each unit set between the two checkpoints.

| table         | one row per                                   | columns                                        |
|---------------|-----------------------------------------------|------------------------------------------------|
| `layers`      | (step, model, unit_set)                       | `compare`'s layer summary (`pct_universal` ...) |
| `units`       | (model, unit_set, unit)                       | final_universal, first_universal_step (NaN: never), stays_universal |
| `persistence` | (step, model, unit_set)                       | final_universal, already_universal, share      |
| `cka`         | (model, unit_set, step, relation)             | other_step, cka (relation "next" or "final")   |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._defaults import THRESHOLD
from ..compare import compare_activations
from ..compare._passes import first_batch, rerunnable
from ..errors import UniversalityError
from ..moments import Block, MomentAccumulator, layout_of, normalize_batch
from ..similarity import linear_cka
from ..similarity._blocks import cross_moment

__all__ = ["TrainingUniversality", "universality_over_training"]

_KEYS = ["model", "unit_set", "unit"]


@dataclass
class TrainingUniversality:
    """The tables of `universality_over_training` (module docstring), steps ascending."""

    layers: pd.DataFrame
    units: pd.DataFrame
    persistence: pd.DataFrame
    cka: pd.DataFrame


def universality_over_training(checkpoints: dict, *, threshold: float = THRESHOLD, rotations: int = 1,
                               seed: int = 0, device: str = "cpu", dtype: str = "float64") -> TrainingUniversality:
    """Compare the models at every checkpoint step and follow each unit's universality across steps.

    Parameters
    ----------
    checkpoints : {step (int): batches}
        batches: a list of {model: {unit_set: Tensor[tokens, units]}}, or a callable returning a fresh
        iterable of them; the same models, unit sets and sizes at every step, and the same tokens in the
        same batches (rows aligned across steps). At least 2 steps.
    threshold, rotations, seed, device, dtype : as in `compare_activations`.

    >>> import torch
    >>> z = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0))
    >>> batches = lambda noise: [{"a": z, "b": z + noise * torch.randn(1000, 16)}]
    >>> result = universality_over_training({0: batches(10.0), 100: batches(0.01)})
    >>> result.persistence[["step", "model", "share"]].values.tolist()
    [[0, 'a', 0.0], [0, 'b', 0.0], [100, 'a', 1.0], [100, 'b', 1.0]]
    """
    steps, makes = _checked(checkpoints)
    final = steps[-1]
    layers, universal, cka = [], [], []
    for index, step in enumerate(steps):
        others = sorted({steps[min(index + 1, len(steps) - 1)], final} - {step})
        accumulators: dict[tuple[str, str], MomentAccumulator] = {}
        comparison = compare_activations(_tee(step, makes, others, accumulators), threshold=threshold,
                                         rotations=rotations, seed=seed, device=device, dtype=dtype)
        layers.append(comparison.layers.assign(step=step))
        universal.append(comparison.units[[*_KEYS, "universal"]].assign(step=step))
        if others:
            cka += _cka_rows(accumulators, step, next_step=others[0], final=final)
    layers_table = pd.concat(layers, ignore_index=True)
    layers_table = layers_table[["step", *[c for c in layers_table.columns if c != "step"]]]
    units, persistence = _follow(pd.concat(universal, ignore_index=True), steps)
    return TrainingUniversality(layers_table, units, persistence, pd.DataFrame(cka, columns=[
        "model", "unit_set", "step", "relation", "other_step", "cka"]))


def _checked(checkpoints: dict) -> tuple[list[int], dict]:
    """(steps ascending, {step: function returning the batches}); one line unless every step holds the
    final step's models, unit sets and sizes."""
    if not isinstance(checkpoints, dict) or len(checkpoints) < 2:
        raise UniversalityError("checkpoints must be a dict {step: batches} of at least 2 checkpoint steps, got "
                                f"{type(checkpoints).__name__} of {len(checkpoints) if hasattr(checkpoints, '__len__') else '?'}")
    steps = sorted(checkpoints)
    makes = {}
    for step in steps:
        make, reusable = rerunnable(checkpoints[step])
        if not reusable:
            raise UniversalityError(f"checkpoint step {step}: its batches are streamed up to 3 times (its own pass, "
                                    "beside the step before it and beside every earlier step as the final one); pass "
                                    "a list or a callable returning a fresh iterable")
        makes[step] = make
    layouts = {step: layout_of(first_batch(next(iter(makes[step]()), None))[0]) for step in steps}
    final = layouts[steps[-1]]
    for step in steps:
        if layouts[step] != final:
            raise UniversalityError(
                f"checkpoint step {step} has unit sets {layouts[step]}, the final step {steps[-1]} has {final}: "
                "checkpoints of different architectures cannot be compared over training; pass the checkpoints "
                "of one family of models")
    return steps, makes


def _tee(step: int, makes: dict, others: list[int], accumulators: dict):
    """Yield the batches of `step`; on the way, feed accumulators[model, unit_set] with that unit set's
    activations at "step" and at each other step (one accumulator per unit set, holding its Grams and
    its cross-moments with the other steps only)."""
    streams = [iter(makes[other]()) for other in others]
    for number, batch in enumerate(makes[step]()):
        if others:
            models = normalize_batch(batch)
            besides = [normalize_batch(_next(stream, step, other, number)) for stream, other in zip(streams, others)]
            for model, unit_set, x in ((m, name, x) for m, sets in models.items() for name, x in sets.items()):
                joined = {"step": {unit_set: x}, **{f"step-{other}": {unit_set: b[model][unit_set]}
                                                     for other, b in zip(others, besides)}}
                tokens = {x.shape[0] for sets in joined.values() for x in sets.values()}
                if len(tokens) > 1:
                    raise UniversalityError(f"batch {number}: checkpoint steps {step} and {others} hold different "
                                            f"token counts {sorted(tokens)}; stream the same tokens at every step")
                if (model, unit_set) not in accumulators:
                    accumulators[model, unit_set] = _step_accumulator(joined)
                accumulators[model, unit_set].update(joined)
        yield batch


def _step_accumulator(joined: dict) -> MomentAccumulator:
    """An accumulator over one unit set at "step" and the other steps: each Gram and the step's rows
    against the other steps (not the other steps against each other, which CKA here never reads)."""
    size = next(iter(joined["step"].values())).shape[1]
    copies = len(joined)
    blocks = [Block(i * size, (i + 1) * size, i * size, (i + 1) * size) for i in range(copies)]
    blocks.append(Block(0, size, size, copies * size))
    return MomentAccumulator(layout_of(joined), dtype="float64", blocks=blocks)


def _next(stream, step: int, other: int, number: int):
    batch = next(stream, None)
    if batch is None:
        raise UniversalityError(f"checkpoint step {other} has fewer batches than step {step} (ended before batch "
                                f"{number}); stream the same tokens at every step")
    return batch


def _cka_rows(accumulators: dict, step: int, *, next_step: int, final: int) -> list[tuple]:
    """(model, unit_set, step, relation, other_step, cka) for the next and the final checkpoint."""
    rows = []
    for (model, unit_set), acc in accumulators.items():
        for relation, other in (("next", next_step), ("final", final)):
            name = f"step-{other}"
            value = linear_cka(acc.gram_["step"][unit_set], acc.gram_[name][unit_set],
                               cross_moment(acc, ("step", unit_set), (name, unit_set)), acc.count_)
            rows.append((model, unit_set, step, relation, other, value))
    return rows


def _follow(universal: pd.DataFrame, steps: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per unit: universal at the final step, first step universal (NaN: never), universal at every step
    from that one on; per (step, model, unit_set): of the final universal units, how many are universal."""
    wide = universal.pivot_table(index=_KEYS, columns="step", values="universal", aggfunc="first",
                                 sort=False)[steps].astype(bool)  # [units, steps]
    flags = wide.to_numpy()
    crossed = flags.any(axis=1)
    first = np.where(crossed, np.asarray(steps, dtype=float)[flags.argmax(axis=1)], np.nan)
    after = np.arange(len(steps))[None, :] >= flags.argmax(axis=1)[:, None]  # [units, steps]
    stays = crossed & (flags | ~after).all(axis=1)
    units = wide.index.to_frame(index=False).assign(final_universal=flags[:, -1], first_universal_step=first,
                                                    stays_universal=stays)
    ended = wide.mul(flags[:, -1], axis=0)  # [units, steps]: universal at the step and at the end
    counts = ended.groupby(level=["model", "unit_set"], sort=False).sum()  # [unit sets, steps]
    finals = counts[steps[-1]]
    table = counts.stack().rename("already_universal").reset_index()
    table["final_universal"] = table.set_index(["model", "unit_set"]).index.map(finals)
    table = table.sort_values("step", kind="stable")[["step", "model", "unit_set", "final_universal",
                                                      "already_universal"]].reset_index(drop=True)
    table["share"] = table.already_universal / table.final_universal.where(table.final_universal > 0)
    return units, table
