"""One-to-one partners: per model pair, the assignment of units that maximises the summed Pearson
correlation (the Hungarian method, `scipy.optimize.linear_sum_assignment`), beside the max rule.

The max rule (`pairs.partner_unit`) lets many units of one model claim one partner in another: four
near-duplicate units of seed 0 all take unit 7 of seed 1 as their best. A one-to-one assignment gives
each unit at most one partner and each partner at most one unit, so redundancy within a model
(`partner_claimed_by` > 1) reads apart from universality across models.

Columns added to `pairs` (one row per model, unit_set, unit, other_model):
    assigned_partner_unit_set  the unit set of the assigned unit of other_model ("" when none)
    assigned_partner           its index in that unit set (-1: none, as for a dead unit, or one left
                               over when the matched blocks differ in width)
    assigned_corr              Pearson r with it (NaN when none)
    partner_claimed_by         units of this unit's model whose best (max) partner in other_model is
                               this unit's best partner, itself included (0 when it has none)

Blocks matched: when two models have the same unit-set names (seeds of one architecture), each unit
set against its namesake, one float64 [units_s, units_t] tile of the state at a time; otherwise the
whole models, [units_a, units_b]. Dead units (NaN correlations) are never assigned. A block wider
than `dense_limit` on either side is matched on a sparse candidate graph: every unit's `candidates`
best partners, from both sides (row and column top-k, read in row chunks), by
`scipy.sparse.csgraph.min_weight_full_bipartite_matching`. That matching is optimal on the graph,
so equal to the dense one whenever the dense one uses candidate edges only; when the graph holds no
matching of every live unit of the narrower side, it says so in one line.
"""

from __future__ import annotations

import itertools
import numbers

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_array
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from ..errors import UniversalityError, short_repr
from ._comparison import Comparison
from ._correlation import pearson
from ._universality import model_index, unit_index

__all__ = ["assign_partners", "one_to_one", "DENSE_LIMIT", "CANDIDATES"]

DENSE_LIMIT = 20_000  # widest block matched densely: its float64 tile is 3.2 GB and the Hungarian O(n^3)
CANDIDATES = 16  # candidate partners per unit, from each side, on the sparse path
_CHUNK = 2**24  # correlation entries read at a time on the sparse path (128 MB float64)
_SHIFT = 2.0  # sparse weights are r + 2 > 0: a stored zero would be no edge; every full matching has one size
ASSIGNED = ["assigned_partner_unit_set", "assigned_partner", "assigned_corr", "partner_claimed_by"]


def assign_partners(comparison: Comparison, *, dense_limit: int = DENSE_LIMIT, candidates: int = CANDIDATES
                    ) -> Comparison:
    """`comparison` with its `pairs` gaining the one-to-one assignment's columns (module docstring).
    Needs the cross-moments (a one-pass state); `dense_limit` and `candidates` as described there.

    >>> import torch
    >>> from universality.compare import compare_activations
    >>> x = torch.randn(500, 4)
    >>> c = assign_partners(compare_activations([{"a": x, "b": x[:, [2, 0, 3, 1]]}]))
    >>> c.pairs.query("model == 'a'").assigned_partner.tolist()
    [1, 3, 0, 2]
    """
    for name, value in (("dense_limit", dense_limit), ("candidates", candidates)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise UniversalityError(f"{name} must be an integer >= 1, got {short_repr(value)}; e.g. "
                                    f"{name}={DENSE_LIMIT if name == 'dense_limit' else CANDIDATES}")
    acc = comparison.moments
    if not acc.is_default:
        raise UniversalityError("the one-to-one assignment reads the cross-moments, which this comparison's state "
                                "no longer holds (a multi-pass plan or a sketch reduced them); compare in one pass "
                                "(memory_budget=None, mode='exact')")
    partner, corr = {}, {}  # (a, b) -> partner's index in b (-1: none), int64 [units_a]; its r, float64 [units_a]
    for a, b in itertools.combinations(acc.models, 2):
        for m, n in ((a, b), (b, a)):
            partner[m, n], corr[m, n] = np.full(acc.sizes[m], -1), np.full(acc.sizes[m], np.nan)
        for (set_a, rows), (set_b, columns) in _blocks(acc.layout[a], acc.layout[b]):
            def read(chunk: slice, rows=rows, columns=columns) -> np.ndarray:  # [chunk of rows, columns]
                return pearson(acc, a, b, slice(rows.start + chunk.start, rows.start + chunk.stop), columns).numpy()
            i, j, r = one_to_one(read, rows.stop - rows.start, columns.stop - columns.start,
                                 label=f"{a} {set_a} against {b} {set_b}", dense_limit=dense_limit,
                                 candidates=candidates)
            i, j = i + rows.start, j + columns.start
            partner[a, b][i], corr[a, b][i], partner[b, a][j], corr[b, a][j] = j, r, i, r
    return Comparison(acc, comparison.units, _with_assignment(comparison.pairs, acc.layout, partner, corr),
                      threshold=comparison.threshold, rotations=comparison.rotations, seed=comparison.seed,
                      plan=comparison.plan)


def one_to_one(read, rows: int, columns: int, *, label: str = "the block", dense_limit: int = DENSE_LIMIT,
               candidates: int = CANDIDATES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The assignment of live rows to live columns maximising the summed correlation, over a block
    read by `read(slice of rows) -> float64 [rows in the slice, columns]` (NaN rows and columns: dead,
    never assigned). Returns row indices, column indices and their correlations, [matched] each."""
    if max(rows, columns) <= dense_limit:
        corr = read(slice(0, rows))  # [rows, columns]
        finite = np.isfinite(corr)
        live_rows, live_columns = np.flatnonzero(finite.any(axis=1)), np.flatnonzero(finite.any(axis=0))
        if len(live_rows) < rows or len(live_columns) < columns:  # a second tile only when some unit is dead
            corr = corr[np.ix_(live_rows, live_columns)]
        i, j = linear_sum_assignment(corr, maximize=True)
        return live_rows[i], live_columns[j], corr[i, j]
    rows_of, columns_of, weights, live_rows, live_columns = _candidate_edges(read, rows, columns, candidates)
    if not live_rows.any() or not live_columns.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    # the graph on live units only: a dead unit is no vertex, so "full" means every live unit of the narrower side
    row_id, column_id = np.cumsum(live_rows) - 1, np.cumsum(live_columns) - 1
    graph = csr_array((weights + _SHIFT, (row_id[rows_of], column_id[columns_of])),
                      shape=(int(live_rows.sum()), int(live_columns.sum())))
    try:
        i, j = min_weight_full_bipartite_matching(graph, maximize=True)
    except ValueError:
        raise UniversalityError(f"no one-to-one assignment of every live unit of the narrower side of {label} exists "
                                f"among each unit's {candidates} best candidates; raise candidates (e.g. "
                                f"candidates={4 * candidates})") from None
    return (np.flatnonzero(live_rows)[i], np.flatnonzero(live_columns)[j],
            np.asarray(graph[i, j], dtype=np.float64).ravel() - _SHIFT)


def _candidate_edges(read, rows: int, columns: int, k: int):
    """The sparse path's graph: each live row's k best columns and each live column's k best rows, read
    in row chunks. Returns row index, column index, r [edges] (no duplicates) and bool live rows, columns."""
    k_row, k_column = min(k, columns), min(k, rows)
    edges, live_rows, live_columns = [], np.zeros(rows, bool), np.zeros(columns, bool)
    best = np.full((k_column, columns), -np.inf)  # each column's best r so far [k_column, columns]
    best_row = np.zeros((k_column, columns), dtype=np.int64)  # ... and their rows
    chunk = max(1, _CHUNK // columns)
    for start in range(0, rows, chunk):
        corr = read(slice(start, min(start + chunk, rows)))  # [chunk, columns]
        finite = np.isfinite(corr)
        live_rows[start:start + len(corr)], live_columns[:] = finite.any(axis=1), live_columns | finite.any(axis=0)
        corr = np.where(finite, corr, -np.inf)
        top = np.argpartition(-corr, k_row - 1, axis=1)[:, :k_row]  # [chunk, k_row]
        edges.append((np.repeat(np.arange(start, start + len(corr)), k_row), top.ravel(),
                      np.take_along_axis(corr, top, axis=1).ravel()))
        both = np.concatenate([best, corr])  # [k_column + chunk, columns]
        both_row = np.concatenate([best_row, np.broadcast_to(np.arange(start, start + len(corr))[:, None], corr.shape)])
        keep = np.argpartition(-both, k_column - 1, axis=0)[:k_column]  # [k_column, columns]
        best, best_row = np.take_along_axis(both, keep, axis=0), np.take_along_axis(both_row, keep, axis=0)
    edges.append((best_row.ravel(), np.tile(np.arange(columns), k_column), best.ravel()))
    row, column, r = (np.concatenate(part) for part in zip(*edges))
    finite = np.isfinite(r)  # dead rows and columns give -inf: no edge
    _, first = np.unique(row[finite] * columns + column[finite], return_index=True)
    return row[finite][first], column[finite][first], r[finite][first], live_rows, live_columns


def _blocks(sets_a: dict[str, int], sets_b: dict[str, int]) -> list[tuple[tuple[str, slice], tuple[str, slice]]]:
    """(name, span of a's units), (name, span of b's units) matched together (module docstring): namesake
    unit sets, else the whole models."""
    spans_a, spans_b = _spans(sets_a), _spans(sets_b)
    if set(spans_a) == set(spans_b):
        return [((name, spans_a[name]), (name, spans_b[name])) for name in spans_a]
    whole = "(every unit set)"
    return [((whole, slice(0, sum(sets_a.values()))), (whole, slice(0, sum(sets_b.values()))))]


def _spans(sets: dict[str, int]) -> dict[str, slice]:
    """{unit_set: its slice of the model's concatenated units}."""
    stops = np.cumsum(list(sets.values()))
    return {name: slice(int(stop - n), int(stop)) for (name, n), stop in zip(sets.items(), stops)}


def _with_assignment(pairs: pd.DataFrame, layout: dict, partner: dict, corr: dict) -> pd.DataFrame:
    """`pairs` with the ASSIGNED columns, looked up per row from the per-model-pair arrays."""
    pairs = pairs.drop(columns=ASSIGNED, errors="ignore").reset_index(drop=True)
    unit_set, unit = np.full(len(pairs), "", dtype=object), np.full(len(pairs), -1)
    assigned_corr = np.full(len(pairs), np.nan)
    for (a, b), rows in pairs.groupby(["model", "other_model"], sort=False).indices.items():
        index = model_index(layout, a, pairs["unit_set"].to_numpy()[rows], pairs["unit"].to_numpy()[rows])
        found = partner[a, b][index]  # [rows] index in b's concatenated units, -1: none
        names_b, units_b = unit_index(layout, b)
        has = found >= 0
        unit_set[rows[has]], unit[rows[has]] = names_b[found[has]], units_b[found[has]]
        assigned_corr[rows] = corr[a, b][index]
    key = ["model", "other_model", "partner_unit_set", "partner_unit"]
    claimed = pairs.groupby(key, sort=False)["unit"].transform("size").where(pairs["partner_unit"] >= 0, 0)
    return pairs.assign(assigned_partner_unit_set=unit_set, assigned_partner=unit, assigned_corr=assigned_corr,
                        partner_claimed_by=claimed.astype(np.int64))
