"""Universal units (Gurnee et al. 2024): max correlation against each other model, minus the
same against a randomly rotated copy of it, averaged over the other models.

For unit i of model a and another model b:
    max_corr_ab(i)  = max_j rho(x_a,i, x_b,j)              over every unit j of b, every unit set
    baseline_ab(i)  = max_k rho(x_a,i, (Q x_b)_k)          Q: Haar rotation inside each unit set of b
    excess(i)       = mean_b max_corr_ab(i) - mean_b baseline_ab(i)
    universal(i)    = excess(i) > threshold                (the paper's 0.5)

How sure a count is (`universality_null`, R >= 2 rotations, leave one rotation out): rotation r plays
the part of a model with no privileged basis and the other R - 1 rotations its baseline,
    null_excess_r(i) = mean_b baseline_ab,r(i) - mean_b mean_{s != r} baseline_ab,s(i)
and the expected count under the rotation null is the mean over r of #{live i: null_excess_r(i) > threshold}.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch

from ..moments import MomentAccumulator
from ._correlation import dead_units
from ._maxima import PairMaxima, baseline_scales

__all__ = ["universality_tables", "rotated_maxima", "tables_from_maxima", "layer_summary", "universality_null",
           "rotation_columns", "unit_index", "model_index"]

def universality_tables(acc: MomentAccumulator, *, threshold: float, rotations: int, seed: int,
                        kind: str = "auto"):
    """The `units` and `pairs` tables of a `Comparison` (see its docstring for the columns), reduced
    block by block from `acc`'s cross blocks (`PairMaxima`)."""
    scales = baseline_scales(acc, rotations=rotations, seed=seed, kind=kind)
    maxima = PairMaxima(acc.layout, rotations)
    for block, values in acc.blocks_.items():
        if not block.is_gram:
            maxima.add_block(block, values, scales)
    return tables_from_maxima(maxima, {m: dead_units(acc, m).numpy() for m in acc.models}, threshold=threshold)


def rotated_maxima(acc: MomentAccumulator, *, rotations: int, seed: int) -> np.ndarray:
    """`rotations` rotated maxima for every row of the `pairs` table (`tables_from_maxima`'s order: model,
    other model, unit), without the max correlations: float64 [pairs rows, rotations], NaN where no rotated
    unit is live. Antithetic pairs: rotations Q_r, r = 0 .. D - 1 ("auto" kind, D = ceil(rotations / 2),
    the comparison's own rotations for r below its count), give the first D columns, and -Q_r, also Haar,
    the rest: max_j of the correlations with -Q_r's units is minus their min with Q_r's, read in the same
    pass over the same product, so each product yields two maxima and the cost halves. For a unit set of n
    units the max and the min of n exchangeable rotated correlations are nearly independent (extremes of a
    large sample are asymptotically independent); the calibration tests check the null's p-values stay
    uniform and each column against a direct float64 computation from the tokens."""
    drawn = -(-rotations // 2)
    scales = baseline_scales(acc, rotations=drawn, seed=seed)
    maxima = PairMaxima(acc.layout, drawn, correlations=False, antithetic=True)
    for block, values in acc.blocks_.items():
        if not block.is_gram:
            maxima.add_block(block, values, scales)
    both = np.concatenate([maxima.finished(a, b)[2].T for a in acc.models for b in acc.models if b != a])
    return both[:, :rotations]


def tables_from_maxima(maxima: PairMaxima, dead: dict[str, np.ndarray], *, threshold: float):
    """`units` and `pairs` tables from finished maxima and each model's dead units (bool [units_m])."""
    pair_frames, unit_frames = [], []
    models = list(maxima.layout)
    indices = {m: unit_index(maxima.layout, m) for m in models}
    rotations = maxima.rotations
    for a in models:
        others = [b for b in models if b != a]
        sets_a, units_a = indices[a]
        max_corr = np.empty((len(others), maxima.sizes[a]))
        baseline = np.empty_like(max_corr)
        for k, b in enumerate(others):
            max_corr[k], partner, per_rotation = maxima.finished(a, b)
            baseline[k] = per_rotation.mean(axis=0)
            sets_b, units_b = indices[b]
            live = partner >= 0
            pair_frames.append(pd.DataFrame({
                "model": a, "unit_set": sets_a, "unit": units_a, "other_model": b,
                "max_corr": max_corr[k],
                "partner_unit_set": np.where(live, sets_b[np.maximum(partner, 0)], ""),
                "partner_unit": np.where(live, units_b[np.maximum(partner, 0)], -1),
                "baseline_max_corr": baseline[k],
                **({f"baseline_max_corr_r{r}": per_rotation[r] for r in range(rotations)} if rotations > 1 else {}),
            }))
        with warnings.catch_warnings():  # a unit dead against every model has NaN means: expected
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_max, mean_base = np.nanmean(max_corr, axis=0), np.nanmean(baseline, axis=0)
        excess = mean_max - mean_base
        unit_frames.append(pd.DataFrame({
            "model": a, "unit_set": sets_a, "unit": units_a, "mean_max_corr": mean_max,
            "mean_baseline": mean_base, "excess_corr": excess,
            "universal": np.nan_to_num(excess, nan=-np.inf) > threshold, "dead": dead[a],
        }))
    return pd.concat(unit_frames, ignore_index=True), pd.concat(pair_frames, ignore_index=True)


def unit_index(layout: dict, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Unit-set name and index within it for each concatenated unit of `model`."""
    names = np.concatenate([np.full(n, s, dtype=object) for s, n in layout[model].items()])
    units = np.concatenate([np.arange(n) for n in layout[model].values()])
    return names, units


def model_index(layout: dict, model: str, unit_sets, units) -> np.ndarray:
    """Index of each (unit_sets[k], units[k]) among `model`'s concatenated units (the state's order), int64."""
    offsets = dict(zip(layout[model], np.cumsum([0, *layout[model].values()]).tolist()))
    return (pd.Series(unit_sets).map(offsets).to_numpy(np.int64) + np.asarray(units)).astype(np.int64)


def layer_summary(units: pd.DataFrame) -> pd.DataFrame:
    """Per (model, unit_set): units, dead, universal, percent universal of live units, medians."""
    grouped = units.groupby(["model", "unit_set"], sort=False)
    summary = grouped.agg(
        units=("unit", "size"), dead=("dead", "sum"), universal=("universal", "sum"),
        median_max_corr=("mean_max_corr", "median"), median_baseline=("mean_baseline", "median"),
        median_excess=("excess_corr", "median"),
    ).reset_index()
    live = (summary["units"] - summary["dead"]).where(lambda n: n > 0)
    summary.insert(5, "pct_universal", 100.0 * summary["universal"] / live)
    return summary


def rotation_columns(pairs: pd.DataFrame) -> list[str]:
    """The per-rotation baseline columns `baseline_max_corr_r{r}` of a pairs table, in rotation order."""
    prefix = "baseline_max_corr_r"
    return sorted((c for c in pairs.columns if c.startswith(prefix)), key=lambda c: int(c[len(prefix):]))


def universality_null(pairs: pd.DataFrame, *, threshold: float) -> dict[str, float]:
    """The count of universal units expected under the rotation null (module docstring), from a pairs
    table holding `baseline_max_corr_r{r}` columns (one per rotation, when there are 2 or more), over units with a finite
    null excess. Returns rotations, expected (mean over r), min and max over r; with fewer than 2
    rotation columns expected, min and max are NaN (one rotation cannot be compared with another).

    >>> pairs = pd.DataFrame({"model": "a", "unit_set": "s", "unit": [0, 1], "other_model": "b",
    ...     "baseline_max_corr_r0": [0.9, 0.1], "baseline_max_corr_r1": [0.1, 0.1]})
    >>> universality_null(pairs, threshold=0.5)
    {'rotations': 2, 'expected': 0.5, 'min': 0.0, 'max': 1.0}
    """
    columns = rotation_columns(pairs)
    if len(columns) < 2:
        return {"rotations": len(columns), "expected": float("nan"), "min": float("nan"), "max": float("nan")}
    # mean over other models b, skipping NaN (dead partners) as nanmean does: [units, R]
    per_unit = pairs.groupby(["model", "unit_set", "unit"], sort=False)[columns].mean().to_numpy(dtype=float)
    rest = (per_unit.sum(axis=1, keepdims=True) - per_unit) / (len(columns) - 1)  # leave rotation r out
    null_excess = per_unit - rest
    finite = np.isfinite(null_excess).all(axis=1)
    counts = (null_excess[finite] > threshold).sum(axis=0)  # [R]
    return {"rotations": len(columns), "expected": float(counts.mean()), "min": float(counts.min()),
            "max": float(counts.max())}
