"""The sketch's rotation baselines (`compare._sketch`): denoised from the subsample for every unit,
and exact over all tokens for the units whose universal flag the subsample cannot settle.

A unit's baseline from the subsample alone carries the subsample's noise (per unit about
0.5 / sqrt(subsample tokens), measured by benchmarks/bench_sketch.py) and a bias that depends on the
unit's kind, which `denoised_baseline` removes on average but not per kind (shared-feature units
-0.023, very sparse units +0.023 at 655 subsample tokens, while plain units are within 0.005). Both
move units across the threshold. So the units whose excess, estimated after pass 1, lies within
`margin_for` of the threshold (`units_near_threshold`) get their full cross-moment rows in pass 2
(`CandidateMoments(rows=...)`), and `exact_row_baselines` turns those rows into the baseline over
all tokens with the rotations of pass 1. Its one approximation: the rotated units' variances
diag(Q G Q^T) use G with every unit's variance over all tokens and the correlations between units of
one set from the subsample (the set's Gram over all tokens would cost as much per token as an exact
pass); the error this leaves is measured in benchmarks/bench_sketch.py.
"""

from __future__ import annotations

import itertools

import torch

from ._candidates import TopCandidates
from ._maxima import BaselineScales, PairMaxima
from ._refine import CandidateMoments

__all__ = ["denoised_baseline", "margin_for", "units_near_threshold", "exact_row_baselines"]

# The margin around the threshold within which a unit's baseline is made exact, in units of
# 1 / sqrt(subsample tokens). The excess estimated after pass 1 (the subsample's top correlation minus
# the denoised baseline) was off from exact mode's by sd 0.65 / sqrt(T_sub) and at most
# 2.8 / sqrt(T_sub) for the units within 0.05 of the threshold (4 x 2048 units, 655 of 16384
# tokens, benchmarks/bench_sketch.py's workload); a margin of 3 missed 1 of 198 of them, 4 none.
MARGIN_SCALE = 4.0


def margin_for(subsample_tokens: int) -> float:
    """Half-width of the band around the threshold whose units get exact baselines."""
    return MARGIN_SCALE / max(subsample_tokens, 1) ** 0.5


def denoised_baseline(peak: torch.Tensor, rotated: torch.Tensor, subsample_tokens: int, tokens: int
                      ) -> torch.Tensor:
    """The rotation baseline over `tokens` tokens, estimated from its value over the subsample.

    peak : float64 [rotations, units], the subsample's max correlation of each unit with the rotated
        units of the other model (-inf: none)
    rotated : float64 [rotations, 3, units], count, sum and sum of squares of those correlations

    A unit's correlations with the n rotated units are its population values, spread with variance
    v_pop about their mean, plus sampling noise of variance about 1 / T over T tokens (Pearson's r
    near 0). Rotated units are sums over many units, so both are close to Gaussian, and the max over n
    sits mean + z_n sqrt(v_pop + 1 / T) with z_n depending on n only. The subsample gives the mean, the
    spread v = v_pop + 1 / T_sub and its max, so over all tokens the max is about

        mean + (peak - mean) sqrt((max(v - 1 / T_sub, 0) + 1 / T) / v).

    Without it the baseline of a short subsample is biased high (+0.067 at 327 tokens for unit sets of
    1024-3072, measured by benchmarks/bench_sketch.py) and units just above the threshold were lost."""
    count, total, squares = rotated.unbind(dim=1)
    mean = total / count.clamp_min(1)
    spread = (squares / count.clamp_min(1) - mean.square()).clamp_min(0)
    population = (spread - 1 / subsample_tokens).clamp_min(0)
    shrink = ((population + 1 / tokens) / spread).sqrt()
    shrink = torch.where(spread > 0, shrink.clamp_max(1), 1.0)
    return torch.where(torch.isfinite(peak), mean + (peak - mean) * shrink, peak)


def units_near_threshold(top: TopCandidates, baseline: PairMaxima, *, threshold: float, margin: float,
                         subsample_tokens: int, tokens: int, limit: int | None = None,
                         leave_out: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Global indices (int64 [near], sorted) of the units whose excess estimated after pass 1 lies
    within `margin` of `threshold` (the subsample's largest correlation with each other model, the top
    candidate's, minus the denoised baseline for `tokens` tokens, averaged as the tables do), at most
    `limit` of them, the closest to the threshold; and how many more were within the margin. Units of
    `leave_out` (global indices: those getting full rows anyway) are neither returned nor counted."""
    distance = []
    for a in top.layout:
        maxima, baselines = [], []
        for b in top.layout:
            if b != a:
                maxima.append(top.values[a, b][:, 0])
                baselines.append(denoised_baseline(baseline.baseline[a, b], baseline.rotated_moments[a, b],
                                                   subsample_tokens, tokens).mean(dim=0))
        excess = _nanmean(torch.stack(maxima)) - _nanmean(torch.stack(baselines))  # [units_a], NaN: dead
        distance.append((excess - threshold).abs())
    distance = torch.cat(distance)  # [all units], NaN: dead
    if leave_out is not None:
        distance[leave_out] = torch.nan
    near = torch.nonzero(distance <= margin).flatten()
    kept = near if limit is None else near[distance[near].argsort(stable=True)[:limit]]
    return kept.sort().values, len(near) - len(kept)


def exact_row_baselines(refine: CandidateMoments, subsample_grams: dict, scales: BaselineScales
                        ) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
    """{(a, b): (units of a, int64 [n] (indices inside a), baselines float64 [rotations, n])} over all
    tokens for the units of `refine.rows`, against the rotated units of every other model b.

    refine : the finished pass 2, holding those units' cross-moment rows over all tokens
    subsample_grams : {model: {unit_set: Gram [n, n]}} of pass 1 (the subsample)
    scales : pass 1's `BaselineScales` (its rotations are reused, so each unit's baseline is the
        one exact mode computes with the same seed, up to the rotated variances: module docstring)
    """
    scale = refine.scale.double()
    variance = refine.variance_.cpu() / scale.cpu().square()  # sums of squared deviations, unscaled [units]
    rows = refine.rows.cpu()
    comoment = (refine.row_comoment_ / (scale[refine.rows, None] * scale[None, :])).cpu()  # [rows, units]
    inverse_row = variance[rows].rsqrt()
    sizes = {model: sum(sets.values()) for model, sets in refine.layout.items()}
    starts = dict(zip(sizes, itertools.accumulate([0, *sizes.values()])))
    rotations = next(iter(scales.rotated.values()))[1].shape[0]
    result = {}
    for a, size_a in sizes.items():
        mine = (rows >= starts[a]) & (rows < starts[a] + size_a)
        if not bool(mine.any()):
            continue
        cross_rows, inverse = comoment[mine], inverse_row[mine, None]
        for b, sets in refine.layout.items():
            if b == a:
                continue
            peak = torch.full((rotations, int(mine.sum())), -torch.inf, dtype=torch.float64)
            set_start = starts[b]
            for name, width in sets.items():
                columns = slice(set_start, set_start + width)
                gram = _gram_over_all_tokens(subsample_grams[b][name].double().cpu(), variance[columns])
                rotated, _ = scales.rotated[b, name]
                rotated_inverse = rotated.rotated_variances(gram).clamp_min(0).rsqrt()  # [rotations, width]
                corr = rotated.rotate_columns(cross_rows[:, columns], rotated_inverse, slice(0, rotations))
                corr = torch.nan_to_num(corr * inverse[:, :, None], nan=-torch.inf)  # [units, rotations, width]
                torch.maximum(peak, corr.amax(dim=2).T, out=peak)
                set_start += width
            result[a, b] = (rows[mine] - starts[a], peak)
    return result


def _gram_over_all_tokens(subsample_gram: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """The subsample's correlations between the units of one set, scaled by their variances over all
    tokens `variance` [n]: float64 [n, n] (units the subsample never saw move: 0 off the diagonal)."""
    spread = subsample_gram.diagonal().sqrt()
    correlation = subsample_gram / (spread[:, None] * spread[None, :])
    correlation = torch.nan_to_num(correlation, nan=0.0, posinf=0.0, neginf=0.0)
    gram = correlation * (variance[:, None] * variance[None, :]).sqrt()
    gram.diagonal().copy_(variance)
    return gram


def _nanmean(values: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 of the finite entries (NaN where none)."""
    finite = torch.isfinite(values)
    return torch.where(finite, values, 0).sum(dim=0) / finite.sum(dim=0)
