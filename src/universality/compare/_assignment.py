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
matching of every live unit of the narrower side, it says so in one line. Both paths live in
`universality._one_to_one`, shared with the SAE latent matching (`saes.match`).
"""

from __future__ import annotations

import itertools
import numbers

import numpy as np
import pandas as pd

from .._one_to_one import CANDIDATES, DENSE_LIMIT, one_to_one
from ..errors import UniversalityError, short_repr
from ._comparison import Comparison
from ._correlation import pearson
from ._universality import model_index, unit_index

__all__ = ["assign_partners", "one_to_one", "DENSE_LIMIT", "CANDIDATES"]

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
