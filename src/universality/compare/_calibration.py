"""Calibrated universality, beside the paper's rule: how surprising each unit's max correlation is
against the maxima of R rotated copies of the other model.

The paper's rule (excess > 0.5) reads one number against a fixed bar, so it mislabels units of
narrow or strongly correlated unit sets, whose rotation baseline is itself high: a model against
its own neuron-permuted copy has exact twins (correlation 1) that read "not universal" when their
baseline is above 0.5 (13.6% of MiniLM's neurons at about 4k tokens). Here every (unit, other
model) is instead tested against its own null, the maxima b_1..b_R over R seeded Haar rotations (R = 32
by default): the comparison's own first R when it has that many, otherwise R/2 rotations Q_r (the first
of them the comparison's own) and their antithetic partners -Q_r, whose maxima are minus Q_r's minima
read from the same products (`_universality.rotated_maxima`), at half the cost of R independent ones:

    baseline_mean  the mean of b_1..b_R (the paper's `baseline_max_corr` averages the comparison's
                   own rotations only, often 1)
    baseline_std   the standard deviation of b_1..b_R (ddof = 1)
    z              (max_corr - mean) / baseline_std
    p_empirical    (1 + #{r: b_r >= max_corr}) / (R + 1), valid whatever the null's shape, but never
                   below 1 / (R + 1) (0.03 at R = 32)
    p_value        the upper tail at max_corr of a Gumbel fitted to b_1..b_R by its moments
                   (scale = std sqrt(6) / pi, location = mean - 0.5772 scale): a max over many nearly
                   Gaussian correlations is Gumbel-like (extreme-value theory), so the tail can be read
                   beyond 1 / (R + 1); an extrapolation there, checked by the null test below
    q_value        Benjamini-Hochberg over the units of one model against one other model

A unit is `calibrated_universal` when its q-value is below alpha against every other model. The
`units` table gets, per unit, the least significant of its other models: `z` (min), `p_value` and
`q_value` (max). Under the null (independent models) the p-values are uniform (tested with a KS test);
the paper's `universal` is kept as it was.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from ..errors import UniversalityError, short_repr

__all__ = ["calibrated_tables", "check_alpha", "DEFAULT_ALPHA", "DEFAULT_CALIBRATION_ROTATIONS"]

DEFAULT_ALPHA = 0.01
DEFAULT_CALIBRATION_ROTATIONS = 32
_KEYS = ["model", "unit_set", "unit"]
_EULER_GAMMA = 0.5772156649015329


def check_alpha(alpha) -> float:
    """`alpha` checked: a number in (0, 1); one line otherwise."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < 1:
        raise UniversalityError(f"alpha must be a number in (0, 1), got {short_repr(alpha)}; e.g. alpha=0.01")
    return float(alpha)


def calibrated_tables(units: pd.DataFrame, pairs: pd.DataFrame, rotated: np.ndarray, *, alpha: float
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`units` and `pairs` with the calibration columns (module docstring) added, from the rotated
    maxima `rotated` float64 [pairs rows, R >= 2] (NaN: dead)."""
    alpha = check_alpha(alpha)
    if rotated.ndim != 2 or rotated.shape[0] != len(pairs) or rotated.shape[1] < 2:
        raise UniversalityError(f"calibration needs the maxima of at least 2 rotations per pairs row, got an array "
                                f"of shape {list(rotated.shape)} for {len(pairs)} rows")
    actual = pairs["max_corr"].to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean, std = rotated.mean(axis=1), rotated.std(axis=1, ddof=1)
        z = (actual - mean) / std
        scale = std * math.sqrt(6) / math.pi
        location = mean - _EULER_GAMMA * scale
        p_value = -np.expm1(-np.exp(-(actual - location) / scale))
    p_value = np.where(std > 0, p_value, np.where(actual > mean, 0.0, 1.0))
    live = np.isfinite(actual) & np.isfinite(mean)
    p_value[~live] = np.nan
    z[~live] = np.nan
    p_empirical = np.where(live, (1 + (rotated >= actual[:, None]).sum(axis=1)) / (rotated.shape[1] + 1), np.nan)
    q_value = np.full(len(pairs), np.nan)
    for _, rows in pairs.groupby(["model", "other_model"], sort=False).indices.items():
        finite = rows[np.isfinite(p_value[rows])]
        if len(finite):
            q_value[finite] = false_discovery_control(p_value[finite], method="bh")
    pairs = pairs.assign(baseline_mean=mean, baseline_std=std, z=z, p_empirical=p_empirical, p_value=p_value, q_value=q_value)
    per_unit = (pairs.assign(untested=pairs.q_value.isna())  # a column, not a lambda per group (8k Series)
                .groupby(_KEYS, sort=False).agg(z=("z", "min"), p_value=("p_value", "max"), q_value=("q_value", "max"),
                                                untested=("untested", "any")))
    units = units.drop(columns=["z", "p_value", "q_value", "calibrated_universal"], errors="ignore")
    units = units.merge(per_unit.reset_index(), on=_KEYS, how="left", validate="one_to_one")
    units["calibrated_universal"] = (units.q_value < alpha) & ~units.untested.astype(bool)
    return units.drop(columns="untested"), pairs
