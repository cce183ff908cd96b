"""Which irreps two seeds share as subspaces: their hidden layers compared through each irrep's rho(ab) block.

| function           | input                                   | returns: DataFrame columns                         |
|--------------------|-----------------------------------------|----------------------------------------------------|
| `irrep_similarity` | hidden [pairs, units] per seed          | seed_a, seed_b, irrep, dim, mean_canonical_corr, cka |

Seed s's hidden layer, centred over the N = n^2 pairs, is X_s [N, units]. Irrep rho's ab-block is the
r-dim space of functions of the pair that are a function of a b in rho's block of R^G (r = dim^2 / e: the
rank of `irrep_bases`' Q); P_rho [N, N] projects onto it, and Y_s = P_rho X_s is the layer's rho(ab) part
(`hidden_fve`'s 'ab' term). Per pair of seeds and non-trivial irrep, from the whole layers' Grams
G_s = X_s^T X_s and the block's cross-moment C_rho = Y_a^T Y_b = X_a^T P_rho X_b [u_a, u_b]:

- mean_canonical_corr: the canonical correlations of X_a and X_b with the cross-covariance restricted to
  the block (`canonical` on G_a, G_b, C_rho, with the package's ridge), the top r of them averaged as
  `cca` does (sum rho_i / sum s_i). At ridge 0 they are the singular values of (Q^T U_a)^T (Q^T U_b), U_s an
  orthonormal basis of seed s's span over pairs: 1 when both layers contain the whole block, 0 when either
  has none of it. C_rho is one term of X_a^T X_b = sum of X_a^T P X_b over an orthogonal split of R^pairs.
- cka: ||C_rho||_F^2 / (||G_a||_F ||G_b||_F), the block's part of the layers' linear CKA, in [0, 1]; small
  when the block holds little of either layer's variance.

Why the whole layers and not CCA or CKA of Y_a and Y_b alone: both lie in the same r-dim space, so once
each has rank r (any layer wider than r with a trace of rho) all their canonical correlations are 1 and
their CKA is near 1 whatever the seeds learned: two untrained S4 MLPs (64 units) score CCA 1.0 and CKA
0.8-1.0 on every irrep, where the definitions above give about 0.05 and 0.0000.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from .._defaults import SIMILARITY_RIDGE
from .._inputs import as_float64
from ..errors import UniversalityError
from ..groups import Group
from ..similarity._state_metrics import (Canonical, Spectrum, canonical, check_ridge, cka_from, eigen_cross,
                                         mean_cca_from, spectrum)
from ._bases import irrep_bases, is_trivial, product_means

__all__ = ["irrep_similarity"]

COLUMNS = ["seed_a", "seed_b", "irrep", "dim", "mean_canonical_corr", "cka"]


def irrep_similarity(group: Group, hidden: Mapping | Iterable, *, ridge: float = SIMILARITY_RIDGE) -> pd.DataFrame:
    """Per pair of seeds (in the order given) and non-trivial irrep: how far the two hidden layers share the
    irrep's rho(ab) block (module docstring), one row each (`COLUMNS`).

    hidden : {seed: [pairs, units]} or an iterable of (seed, [pairs, units]), all pairs a-major
        Read once, in order, each seed reduced to its Gram and block coordinates before the next is read:
        a generator of (seed, activations) holds one seed's activations at a time. Widths may differ.
    ridge : float >= 0, default=1e-3
        As `cca`: each layer's covariance becomes S + ridge (tr S / n) I. A dead layer (no variance): NaN.

    >>> from universality.groups import make_group, real_irreps
    >>> g = make_group("S3")
    >>> sign_ab = real_irreps(g)[1].character[g.table.ravel()]  # [pairs]: sign(a b)
    >>> table = irrep_similarity(g, {"s0": sign_ab[:, None], "s1": -2 * sign_ab[:, None]}, ridge=0.0)
    >>> table[["irrep", "mean_canonical_corr", "cka"]].round(6).values.tolist()
    [['(1,1,1)', 1.0, 1.0], ['(2,1)', 0.0, 0.0]]
    """
    ridge = check_ridge(ridge)
    n = group.order
    bases = [(irrep, basis) for irrep, basis in irrep_bases(group) if not is_trivial(irrep)]
    seeds: dict[str, tuple[Spectrum, list[np.ndarray]]] = {}
    for name, values in hidden.items() if isinstance(hidden, Mapping) else hidden:
        x = as_float64(values, f"hidden of {name!r}", {"pairs": n * n, "units": None})
        x = x - x.mean(axis=0)  # [pairs, units]
        g = product_means(group, x.reshape(n, n, -1))  # [n, units]: the part of each unit that is a function of a b
        # Y_s = Q Z read at c = a b, n pairs per c: C_rho = n Z_a^T Z_b, with Z = Q^T g [r, units]
        seeds[name] = spectrum(torch.from_numpy(x.T @ x), n * n), [basis.T @ g for _, basis in bases]
    if len(seeds) < 2:
        raise UniversalityError(f"irrep similarity compares seeds in pairs: pass at least 2 seeds' hidden layers, "
                                f"got {len(seeds)}")
    rows = []
    for (name_a, (a, parts_a)), (name_b, (b, parts_b)) in itertools.combinations(seeds.items(), 2):
        for (irrep, basis), z_a, z_b in zip(bases, parts_a, parts_b):
            t = eigen_cross(torch.from_numpy(n * z_a.T @ z_b), a, b, n * n)  # [u_a, u_b]
            rows.append((name_a, name_b, irrep.label, irrep.dim, *_through_block(a, b, t, basis.shape[1], ridge)))
    return pd.DataFrame.from_records(rows, columns=COLUMNS)


def _through_block(a: Spectrum, b: Spectrum, t: torch.Tensor, rank: int, ridge: float) -> tuple[float, float]:
    """(mean of the top `rank` canonical correlations, CKA) of two layers whose cross-covariance, in their
    eigenbases, is the block's T; NaN for a dead layer."""
    if not (a.values.sum() > 0 and b.values.sum() > 0):
        return math.nan, math.nan
    top = Canonical(*(field[..., :rank] for field in canonical(a, b, t, ridge)))  # the block holds at most rank
    return mean_cca_from(top), cka_from(a, b, t)
