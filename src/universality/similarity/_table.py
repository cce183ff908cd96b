"""The similarity table: every metric for every pair of unit sets, with its token-shuffled null.

Pairs: every unit set against every later one in global order (models in stream order, unit sets in
order), so across every model pair all unit-set pairs, and inside a model every pair of distinct sets.

Values: state metrics (`_state_metrics`) from the whole stream's moments; debiased CKA and mutual k-NN
(`_token_metrics`) from the reservoir rows.

Nulls: each score recomputed against a token-shuffled partner, b's reservoir rows in a seeded random
order (the same `nulls` permutations for every pair), reported as mean and sample standard deviation
(NaN for fewer than 2). A shuffled cross-moment cannot come from the state, so a state metric's null is
computed on the reservoir rows: it is chance at the reservoir's rows, not the stream's tokens, so for
metrics biased upwards at few tokens (CKA, CCA, regression: ~ width / tokens) it overstates the chance
level of a value measured over a longer stream. No Haar-rotated null: every state metric is unchanged
by an orthogonal map of the partner (`_state_metrics`), so its rotation null would equal the value.
"""

from __future__ import annotations

import itertools
import math

import pandas as pd
import torch

from .._threads import map_single_threaded
from ..moments import MomentAccumulator
from ._blocks import cross_moment, unit_sets
from ._state_metrics import STATE_METRICS, eigen_cross, spectrum, state_scores
from ._token_metrics import debiased_cka_from, knn_overlap, neighbours, shuffled_neighbours, token_side

__all__ = ["similarity_table", "COLUMNS", "METRICS", "TOKEN_METRICS"]

TOKEN_METRICS = ("debiased_cka", "mutual_knn")
METRICS = STATE_METRICS + TOKEN_METRICS
COLUMNS = ["model_a", "unit_set_a", "model_b", "unit_set_b", "metric", "value", "null_mean", "null_std"]


def shuffles(rows: int, count: int, seed: int) -> list[torch.Tensor]:
    """`count` seeded permutations of range(rows), int64 [rows] each."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(rows, generator=generator) for _ in range(count)]


def similarity_table(acc: MomentAccumulator, rows: dict | None, *, metrics, k: int, ridge: float, seed: int,
                     nulls: int, within_models: bool = True) -> pd.DataFrame:
    """The table (`COLUMNS`) for `acc` (holding `similarity_blocks`) and the reservoir `rows`
    ({model: {unit_set: [rows, units]}}, or None when no metric or null needs them).
    `within_models=False`: only pairs of unit sets of different models (what `default_blocks` hold).
    Each unit set is decomposed once (`spectrum`); the pairs, independent small decompositions, run on
    torch's thread count of single-threaded workers (`map_single_threaded`)."""
    keys = list(unit_sets(acc.layout))
    workers = torch.get_num_threads()
    state = [m for m in metrics if m in STATE_METRICS]
    spectra = {}
    if state:
        decomposed = map_single_threaded(lambda key: spectrum(acc.gram_[key[0]][key[1]], acc.count_), keys, workers)
        spectra = dict(zip(keys, decomposed))
    sides, sampled, knn, orders = {}, {}, {}, []
    if rows is not None:
        sides = {key: token_side(rows[key[0]][key[1]]) for key in keys}
        count = len(next(iter(sides.values())).norms)
        orders = shuffles(count, nulls, seed)
        if state and nulls:
            sampled = {key: spectrum(side.centred.T @ side.centred, count) for key, side in sides.items()}
        if "mutual_knn" in metrics:
            knn = {key: neighbours(rows[key[0]][key[1]], k) for key in keys}

    def pair_records(pair: tuple) -> list[tuple]:
        """The table rows of one pair (a, b) of unit sets."""
        a, b = pair
        values, runs = {}, [{} for _ in orders]
        if state:
            t = eigen_cross(cross_moment(acc, a, b), spectra[a], spectra[b], acc.count_)
            values.update(state_scores(spectra[a], spectra[b], t, state, ridge=ridge))
        if "debiased_cka" in metrics:
            values["debiased_cka"] = debiased_cka_from(sides[a], sides[b], sides[a].centred.T @ sides[b].centred)
        if "mutual_knn" in metrics:
            values["mutual_knn"] = knn_overlap(knn[a], knn[b])
        for run, order in zip(runs, orders):
            cross = sides[a].centred.T @ sides[b].centred[order]  # [n_a, n_b] against the shuffled partner
            if state:
                t = eigen_cross(cross, sampled[a], sampled[b], len(order))
                run.update(state_scores(sampled[a], sampled[b], t, state, ridge=ridge))
            if "debiased_cka" in metrics:
                run["debiased_cka"] = debiased_cka_from(sides[a], sides[b], cross, order)
            if "mutual_knn" in metrics:
                run["mutual_knn"] = knn_overlap(knn[a], shuffled_neighbours(knn[b], order))
        return [(*a, *b, name, value, *_spread([run[name] for run in runs])) for name, value in values.items()]

    pairs = [(a, b) for a, b in itertools.combinations(keys, 2) if within_models or a[0] != b[0]]
    records = [row for rows_of_pair in map_single_threaded(pair_records, pairs, workers) for row in rows_of_pair]
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def _spread(scores: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of the null scores; NaN where undefined (no scores, or one)."""
    if not scores:
        return math.nan, math.nan
    mean = sum(scores) / len(scores)
    if len(scores) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1))
