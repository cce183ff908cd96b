"""`compare_representations`: representation similarity of every pair of unit sets, in one pass."""

from __future__ import annotations

import itertools

import pandas as pd

from .._defaults import KNN_NEIGHBOURS, RESERVOIR_ROWS, SIMILARITY_NULLS, SIMILARITY_RIDGE
from ..compare._passes import check_batches, first_batch, rerunnable
from ..errors import UniversalityError, short_repr
from ..moments import MomentAccumulator, layout_of
from ._blocks import similarity_blocks
from ._reservoir import Reservoir
from ._state_metrics import check_ridge
from ._table import METRICS, TOKEN_METRICS, similarity_table

__all__ = ["compare_representations"]


def compare_representations(batches, *, metrics=METRICS, reservoir: int = RESERVOIR_ROWS, k: int = KNN_NEIGHBOURS,
                            ridge: float = SIMILARITY_RIDGE, seed: int = 0,
                            nulls: int = SIMILARITY_NULLS) -> pd.DataFrame:
    """Stream activation batches once and score the similarity of every pair of unit sets.

    Parameters
    ----------
    batches : iterable of {model_name: {unit_set_name: Tensor[tokens, units]}}, or a callable returning one
        As for `compare_activations`: the same models (at least two) and unit sets in every batch, rows
        aligned by token across models.
    metrics : sequence of {'cka', 'cca', 'svcca', 'pwcca', 'procrustes', 'regression', 'debiased_cka',
              'mutual_knn'}, default=all
        The first six come from the moment state (`similarity._state_metrics`: definitions, invariances);
        'regression' gives two rows, regression_b_from_a and regression_a_from_b (ridge R^2). The last two
        come from the reservoir rows (`similarity._token_metrics`).
    reservoir : int, default=4096
        Token rows kept, a seeded sample (`Reservoir`) for debiased_cka, mutual_knn and the nulls; at
        least 4 when any of those is asked for (unused otherwise). A stream of fewer tokens is kept whole.
    k : int >= 1, default=10
        Neighbours per row of mutual_knn; fewer than the reservoir's rows.
    ridge : float >= 0, default=1e-3
        CCA, PWCCA and regression regularise each covariance as S + ridge (tr S / n) I (scale-free); any
        ridge > 0 gives finite scores for unit sets wider than the tokens; 0: unregularised.
    seed : int >= 0, default=0
        Seeds the reservoir and the shuffles of the nulls.
    nulls : int >= 0, default=3
        Token-shuffled partners per score (`similarity._table`: computed on the reservoir rows; no rotation
        null, as every state metric is rotation-invariant); 0: null columns are NaN.

    Returns
    -------
    pandas.DataFrame with columns model_a, unit_set_a, model_b, unit_set_b, metric, value, null_mean,
    null_std: one row per metric for every unit set against every later one (all pairs across models,
    and distinct sets inside a model). Memory: the state holds every Gram and all cross blocks (as
    `compare_activations` in one pass, plus within-model ones); the reservoir 4 bytes x rows x all units.

    >>> import torch
    >>> x = torch.randn(400, 6)
    >>> batches = [{"a": x[:200], "b": x[:200].flip(1)}, {"a": x[200:], "b": x[200:].flip(1)}]
    >>> table = compare_representations(batches, metrics=("cka", "mutual_knn"), reservoir=128)
    >>> table[["metric", "value"]].round(6).values.tolist()
    [['cka', 1.0], ['mutual_knn', 1.0]]
    """
    metrics, needs_rows = _check_settings(metrics, reservoir, k, ridge, seed, nulls)
    check_batches(batches)
    make, _ = rerunnable(batches)
    stream = iter(make())
    first = next(stream, None)
    layout = layout_of(first_batch(first)[0])
    acc = MomentAccumulator(layout, dtype="float64", blocks=similarity_blocks(layout))
    sample = Reservoir(layout, reservoir, seed=seed) if needs_rows else None
    for number, batch in enumerate(itertools.chain([first], stream)):
        try:
            acc.update(batch)
            if sample is not None:
                sample.update(batch)
        except UniversalityError as error:
            raise UniversalityError(f"batch {number}: {error}") from None
        del batch  # not held while the source builds the next one
    del first
    acc.end_stream()
    _check_rows(acc.count_, sample, metrics, k)
    return similarity_table(acc, None if sample is None else sample.rows_, metrics=metrics, k=k, ridge=ridge,
                            seed=seed, nulls=nulls)


def _check_settings(metrics, reservoir, k, ridge, seed, nulls) -> tuple[tuple[str, ...], bool]:
    """The metrics (deduplicated, in order) and whether reservoir rows are needed; one line for a bad setting."""
    names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    for name in names:
        if name not in METRICS:
            raise UniversalityError(f"unknown metric {short_repr(name)}; choose one of: {', '.join(METRICS)}")
    if not names:
        raise UniversalityError(f"metrics is empty; choose at least one of: {', '.join(METRICS)}")
    names = tuple(dict.fromkeys(names))
    for label, value, least in (("seed", seed, 0), ("nulls", nulls, 0), ("reservoir", reservoir, 0), ("k", k, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UniversalityError(f"{label} must be an integer >= {least}, got {short_repr(value)}")
    check_ridge(ridge)
    needs_rows = bool(nulls) or any(name in TOKEN_METRICS for name in names)
    if needs_rows and reservoir < 4:
        raise UniversalityError(f"reservoir={reservoir} rows are too few for debiased_cka, mutual_knn and the nulls "
                                "(at least 4); raise reservoir, or pass nulls=0 with state metrics only")
    if "mutual_knn" in names and k >= reservoir:
        raise UniversalityError(f"k={k} neighbours need more than {k} reservoir rows (a row is not its own neighbour), "
                                f"got reservoir={reservoir}; raise reservoir or lower k")
    return names, needs_rows


def _check_rows(tokens: int, sample: Reservoir | None, metrics: tuple[str, ...], k: int) -> None:
    """One line if the stream was too short for the metrics asked for."""
    if tokens < 2:
        raise UniversalityError(f"need at least 2 tokens to compare representations, the stream had {tokens}")
    if sample is None:
        return
    kept = len(sample.positions_)
    if "mutual_knn" in metrics and kept <= k:
        raise UniversalityError(f"the stream had {tokens} tokens, too few for mutual_knn with k={k} (each row needs "
                                f"{k} other rows); stream more tokens or lower k")
    if kept < 4:
        raise UniversalityError(f"the stream had {tokens} tokens; debiased_cka and the nulls need at least 4 rows, "
                                "stream more tokens (or pass nulls=0 with state metrics only)")
