"""Irrep bases of R^G and functions of the product a b, shared by the group metrics.

Pairs are always all (a, b) in a-major order, pair index = a * n + b (n = |G|).

| function        | returns                                                          | shape            |
|-----------------|------------------------------------------------------------------|------------------|
| `irrep_bases`   | (irrep, Q) per real irrep, Q an orthonormal basis of its block   | Q [n, dim^2 / e] |
| `product_means` | g(c) = mean of f(a, b) over the n pairs with a b = c             | [n, units]       |
| `find_irreps`   | the `RealIrrep`s named by labels                                 | list             |
| `is_trivial`    | whether an irrep is the trivial one                              | bool             |
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import UniversalityError
from ..groups import Group, RealIrrep, projector, real_irreps

__all__ = ["find_irreps", "irrep_bases", "is_trivial", "product_means"]


@lru_cache(maxsize=16)
def irrep_bases(group: Group) -> tuple[tuple[RealIrrep, np.ndarray], ...]:
    """(irrep, Q) per real irrep in `real_irreps` order; Q [n, rank] spans its isotypic block of R^G.

    Q Q^T = `projector(group, irrep)`; the blocks are orthogonal and together span R^G, so
    stacking every Q gives an orthogonal [n, n] matrix: a real Fourier basis of the group.
    """
    bases = []
    for irrep in real_irreps(group):
        values, vectors = np.linalg.eigh(projector(group, irrep))  # eigenvalues 0 or 1
        bases.append((irrep, vectors[:, values > 0.5]))
    return tuple(bases)


def is_trivial(irrep: RealIrrep) -> bool:
    """The trivial irrep: character 1 on every element."""
    return irrep.dim == 1 and bool(np.all(irrep.character == 1))


def product_means(group: Group, grid: np.ndarray) -> np.ndarray:
    """[n, units]: g(c) = mean over a of f(a, a^-1 c), for f given as `grid` [n_a, n_b, units].

    g(a b) is the orthogonal projection of f onto the functions of the product a b: the n fibres
    {(a, b) : a b = c} partition the pairs, each of size n, and projecting averages each fibre.
    """
    n = group.order
    rows = np.arange(n)[:, None]  # [n, 1]: a
    columns = group.table[group.inverse]  # [n_a, n_c]: a^-1 c, so (a, a^-1 c) has product c
    return grid[rows, columns].mean(axis=0)  # [n_a, n_c, units] -> [n_c, units]


def find_irreps(group: Group, labels) -> list[RealIrrep]:
    """The real irreps named by `labels` (labels or `RealIrrep`s); one-line error listing the choices."""
    irreps = {irrep.label: irrep for irrep in real_irreps(group)}
    if isinstance(labels, (str, RealIrrep)):
        labels = [labels]
    found = []
    for label in labels:
        label = label.label if isinstance(label, RealIrrep) else label
        if label not in irreps:
            raise UniversalityError(f"group {group.name!r} has no real irrep {label!r}; choose from: "
                                    f"{', '.join(irreps)}")
        found.append(irreps[label])
    return found
