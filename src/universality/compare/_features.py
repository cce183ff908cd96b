"""Universal features: the units of several models that are one feature, grouped (a cluster of units;
not the binary token features whose variance reduction names a neuron's family).

Graph: one node per unit (model, unit_set, unit); an undirected edge joins a unit to its best (max)
partner in another model (`pairs.partner_unit`) when the unit passes `rule`:
    "universal"   the paper's rule, excess corr > threshold (`units.universal`), and so does this pair
                  alone (max_corr - baseline_max_corr > threshold): a universal unit's chance best
                  partner in a model that lacks its feature would otherwise join two features
    "calibrated"  `units.calibrated_universal` (after `Comparison.calibrate`; every pair of such a unit
                  is significant). Significance is not strength: on the demo run 3761 of 4071 live units
                  are calibrated-universal and their graph is 2 components of 3835 and 11 units, where
                  the paper's rule gives 17 features of 3-26 units
    "auto"        "calibrated" when the units table has that column, else "universal"
Runs use "universal" (`pipeline/_features.py`).
A universal feature is a connected component with at least one edge, so at least two models. Several
members from one model are near-duplicates that share partners: redundancy within the model, where
`models` counts how far the feature reaches across models.

features, one row per feature, largest reach first (models, then mean_corr, descending):
    feature      id, 0..
    size         member units
    models       models represented
    mean_corr    mean Pearson r over member pairs in different models (read from the state)
    members_<m>  model m's members as "unit_set#unit", space-separated ("" when none)
units gain `feature`: its feature's id, -1 when in none.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import torch
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from ..errors import UniversalityError, short_repr
from ._comparison import Comparison
from ._correlation import pearson
from ._universality import model_index

__all__ = ["universal_features", "FEATURE_RULES"]

FEATURE_RULES = ("auto", "universal", "calibrated")
_KEYS = ["model", "unit_set", "unit"]
_CHUNK = 2**24  # correlation entries read at a time for mean_corr (128 MB float64)


def universal_features(comparison: Comparison, *, rule: str = "auto") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(units with `feature`, features): the module docstring's tables. Needs the cross-moments (a
    one-pass state) for mean_corr.

    >>> import torch
    >>> from universality.compare import compare_activations
    >>> x = torch.randn(4000, 64, generator=torch.Generator().manual_seed(0))
    >>> units, features = universal_features(compare_activations([{"a": x, "b": x.flip(1)}]))  # b's unit j: a's 63 - j
    >>> len(features), set(features["size"]), {int(a[6:]) + int(b[6:]) for a, b in zip(features.members_a,
    ...                                                                            features.members_b)}
    (64, {2}, {63})
    """
    units, pairs, acc = comparison.units, comparison.pairs, comparison.moments
    column = _rule_column(units, rule)
    if not acc.is_default:
        raise UniversalityError("universal features read the cross-moments (mean_corr), which this comparison's "
                                "state no longer holds (a multi-pass plan or a sketch reduced them); compare in one "
                                "pass (memory_budget=None, mode='exact')")
    # 1) edges: a unit passing the rule -> its best partner in each other model
    nodes = pd.MultiIndex.from_frame(units[_KEYS])
    source = nodes.get_indexer(pd.MultiIndex.from_frame(pairs[_KEYS]))
    target = nodes.get_indexer(pd.MultiIndex.from_arrays([pairs["other_model"], pairs["partner_unit_set"],
                                                          pairs["partner_unit"]]))
    chosen = (source >= 0) & (target >= 0)
    chosen[chosen] = units[column].to_numpy(bool)[source[chosen]]
    if column == "universal":
        chosen &= (pairs["max_corr"] - pairs["baseline_max_corr"]).fillna(-np.inf).to_numpy() > comparison.threshold
    # 2) connected components with an edge, numbered by reach
    graph = coo_array((np.ones(int(chosen.sum())), (source[chosen], target[chosen])), shape=(len(units),) * 2)
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    members = units[_KEYS].assign(component=component, node=np.arange(len(units)))[sizes[component] > 1]
    members["feature"] = pd.factorize(members["component"], sort=True)[0]
    count = int(members["feature"].max()) + 1 if len(members) else 0
    mean_corr = _mean_corr(acc, comparison.models, members, count)
    grouped = members.groupby("feature")
    features = pd.DataFrame({"size": grouped.size(), "models": grouped["model"].nunique(),
                             "mean_corr": mean_corr, "first": grouped["node"].min()}, index=range(count))
    order = features.sort_values(["models", "mean_corr", "first"], ascending=[False, False, True], kind="stable").index
    renumber = np.empty(count, dtype=np.int64)
    renumber[order.to_numpy()] = np.arange(count)
    members["feature"] = renumber[members["feature"].to_numpy()]
    features = features.loc[order].drop(columns="first").reset_index(drop=True)
    features.insert(0, "feature", np.arange(count))
    text = members.assign(text=members["unit_set"].astype(str) + "#" + members["unit"].astype(str))
    listed = text.groupby(["feature", "model"])["text"].agg(" ".join).unstack("model")  # [features, models]
    listed = listed.reindex(index=range(count), columns=comparison.models).fillna("").astype(str)
    features = pd.concat([features, listed.add_prefix("members_").reset_index(drop=True)], axis=1)
    feature = np.full(len(units), -1, dtype=np.int64)
    feature[members["node"].to_numpy()] = members["feature"].to_numpy()
    return units.assign(feature=feature), features


def _rule_column(units: pd.DataFrame, rule) -> str:
    """The units column that decides edges under `rule`; one line when unknown or not computed."""
    if rule not in FEATURE_RULES:
        raise UniversalityError(f"unknown feature rule {short_repr(rule)}; choose one of: {', '.join(FEATURE_RULES)}")
    if rule == "calibrated" and "calibrated_universal" not in units:
        raise UniversalityError("rule 'calibrated' needs calibrated_universal in the units table; call "
                                "comparison.calibrate() first, or use rule='universal'")
    calibrated = rule == "calibrated" or (rule == "auto" and "calibrated_universal" in units)
    return "calibrated_universal" if calibrated else "universal"


def _mean_corr(acc, models: list[str], members: pd.DataFrame, count: int) -> np.ndarray:
    """Mean Pearson r over each feature's member pairs in different models, float64 [count]; read per
    model pair in row chunks of at most _CHUNK entries of the state's width."""
    sums, pairs = np.zeros(count), np.zeros(count)
    index = {m: (model_index(acc.layout, m, rows["unit_set"].to_numpy(), rows["unit"].to_numpy()),
                 rows["feature"].to_numpy()) for m, rows in members.groupby("model", sort=False)}
    for a, b in itertools.combinations([m for m in models if m in index], 2):
        (rows, feature_a), (columns, feature_b) = index[a], index[b]
        chunk = max(1, _CHUNK // acc.sizes[b])  # pearson gathers [chunk, units_b] before taking the columns
        for start in range(0, len(rows), chunk):
            corr = pearson(acc, a, b, torch.from_numpy(rows[start:start + chunk]), torch.from_numpy(columns)).numpy()
            same = feature_a[start:start + chunk, None] == feature_b[None, :]  # [chunk, columns]
            feature = np.broadcast_to(feature_a[start:start + chunk, None], same.shape)[same]
            sums += np.bincount(feature, weights=corr[same], minlength=count)
            pairs += np.bincount(feature, minlength=count)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / pairs
