"""Seeds grouped by how differently they predict, and the units universal inside each group.

`seed_clusters`: hierarchical clustering (scipy) of the seeds on a [K, K] divergence (symmetric KL),
cut where merging would join seeds farther apart than `threshold` (nats per position); a cluster's
weight is its share of the seeds (the posterior mass of that solution, when seeds sample it).

`cluster_universality`: per cluster of >= 2 seeds, Gurnee et al.'s rule counted inside the cluster,
    excess_C(i) = mean over b in C, b != model(i) of (max_corr_ab(i) - baseline_max_corr_ab(i)),
against the same over every other seed; a unit is universal when its excess > `threshold`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import UniversalityError

__all__ = ["LINKAGES", "seed_clusters", "cluster_universality"]

LINKAGES = ("single", "average", "complete")


def seed_clusters(models: list[str], divergence: np.ndarray, *, threshold: float,
                  linkage: str = "average") -> pd.DataFrame:
    """One row per model: `model, cluster, cluster_size, cluster_weight`. Clusters are numbered 0, 1, ...
    by size (largest first), then by their first model's position in `models`; `divergence` is a
    symmetric [K, K] array with a zero diagonal.

    >>> d = np.array([[0, .01, 2], [.01, 0, 2], [2, 2, 0]])
    >>> seed_clusters(["a", "b", "c"], d, threshold=0.1).cluster.tolist()
    [0, 0, 1]
    """
    from scipy.cluster.hierarchy import fcluster, linkage as link
    from scipy.spatial.distance import squareform

    if linkage not in LINKAGES:
        raise UniversalityError(f"unknown linkage {linkage!r}; choose one of: {', '.join(LINKAGES)}")
    divergence = np.asarray(divergence, dtype=np.float64)
    k = len(models)
    if divergence.shape != (k, k) or not np.isfinite(divergence).all() or (divergence < 0).any():
        raise UniversalityError(f"divergence must be a finite, non-negative [{k}, {k}] array, got shape "
                                f"{divergence.shape}")
    if k == 1:
        labels = np.ones(1, dtype=int)
    else:
        condensed = squareform((divergence + divergence.T) / 2, checks=False)  # [K (K - 1) / 2]
        labels = fcluster(link(condensed, method=linkage), t=threshold, criterion="distance")
    sizes = pd.Series(labels).value_counts()
    first = {label: int(np.flatnonzero(labels == label)[0]) for label in sizes.index}
    order = sorted(sizes.index, key=lambda label: (-sizes[label], first[label]))
    number = {label: index for index, label in enumerate(order)}
    return pd.DataFrame({"model": list(models), "cluster": [number[label] for label in labels],
                         "cluster_size": [int(sizes[label]) for label in labels],
                         "cluster_weight": [sizes[label] / k for label in labels]})


def _universal(pairs: pd.DataFrame, threshold: float) -> set[tuple]:
    """(model, unit_set, unit) whose mean over the rows' other models of max_corr - baseline_max_corr
    exceeds `threshold` (NaN rows, dead partners, skipped as the units table does)."""
    excess = (pairs.max_corr - pairs.baseline_max_corr).groupby(
        [pairs.model, pairs.unit_set, pairs.unit], sort=False).mean()
    return set(excess.index[excess.to_numpy() > threshold])


def cluster_universality(pairs: pd.DataFrame, clusters: pd.DataFrame, *, threshold: float) -> pd.DataFrame:
    """One row per cluster of >= 2 seeds: `cluster, seeds` (names, space-separated), `universal_within`
    (units of the cluster's seeds universal against its other seeds only), `universal_across` (the same
    units universal against every other seed), `both`, `jaccard` (both / either; NaN when neither).
    `pairs` is a `Comparison.pairs` table; `clusters` is `seed_clusters`'."""
    missing = {"model", "unit_set", "unit", "other_model", "max_corr", "baseline_max_corr"} - set(pairs)
    if missing:
        raise UniversalityError(f"pairs table lacks columns {sorted(missing)}; pass a Comparison's pairs table")
    unknown = set(clusters.model) - set(pairs.model)
    if unknown:
        raise UniversalityError(f"models {sorted(unknown)} are clustered but not in the pairs table; cluster the "
                                f"compared models: {', '.join(sorted(set(pairs.model)))}")
    rows = []
    for cluster, members in clusters.groupby("cluster", sort=True).model:
        members = list(members)
        if len(members) < 2:
            continue
        own = pairs[pairs.model.isin(members)]
        within = _universal(own[own.other_model.isin(members)], threshold)
        across = _universal(own, threshold)
        either = within | across
        rows.append({"cluster": int(cluster), "seeds": " ".join(members), "universal_within": len(within),
                     "universal_across": len(across), "both": len(within & across),
                     "jaccard": len(within & across) / len(either) if either else float("nan")})
    return pd.DataFrame(rows, columns=["cluster", "seeds", "universal_within", "universal_across", "both", "jaccard"])
