"""Symmetric groups exactly: Murnaghan–Nakayama characters and Young's orthogonal form.

Irreps of S_m are labelled by partitions lam of m, (m) the trivial and (1^m) the sign representation.
Both constructions follow Sagan, "The Symmetric Group" (2nd ed.): Thm 4.10.2 (Murnaghan–Nakayama)
and Sec. 3.12 (Young's seminormal and orthogonal forms).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ._group import Group

__all__ = ["cycle_type", "murnaghan_nakayama", "partitions", "support", "symmetric_degree", "young_matrices"]


def support(group: Group) -> np.ndarray:
    """Int [m]: the points moved by some element of a permutation group, ascending."""
    perms = group.permutations  # [n, degree]
    return np.flatnonzero((perms != np.arange(perms.shape[1])).any(axis=0))


def symmetric_degree(group: Group) -> int | None:
    """m when `group` is the full symmetric group of the m >= 2 points it moves, else None."""
    if group.permutations is None:
        return None
    m = len(support(group))
    return m if m >= 2 and group.order == math.factorial(m) else None


def cycle_type(perm: np.ndarray, points: np.ndarray) -> tuple[int, ...]:
    """Cycle lengths of `perm` on `points` (fixed points count as 1-cycles), descending."""
    seen, lengths = set(), []
    for start in points.tolist():
        if start not in seen:
            length, point = 0, start
            while point not in seen:
                seen.add(point)
                point, length = int(perm[point]), length + 1
            lengths.append(length)
    return tuple(sorted(lengths, reverse=True))


def partitions(m: int, largest: int | None = None):
    """Partitions of m as descending tuples, in reverse lexicographic order: (m) first, (1^m) last."""
    if m == 0:
        yield ()
        return
    for first in range(min(m, m if largest is None else largest), 0, -1):
        for rest in partitions(m - first, first):
            yield (first,) + rest


@lru_cache(maxsize=None)
def murnaghan_nakayama(lam: tuple[int, ...], mu: tuple[int, ...]) -> int:
    """chi^lam on cycle type mu: strip rim hooks of length mu[0] from lam, sign (-1)^(leg length), recurse.

    On beta-numbers beta_i = lam_i + (len - 1 - i), removing a rim hook of length r moves one bead
    from b to b - r (an empty spot); its leg length is the number of beads strictly in between.

    >>> murnaghan_nakayama((2, 1), (1, 1, 1)), murnaghan_nakayama((2, 1), (3,))
    (2, -1)
    """
    if not mu:
        return 1
    r, rest = mu[0], mu[1:]
    beta = {part + len(lam) - 1 - i for i, part in enumerate(lam)}
    total = 0
    for b in beta:
        if b - r >= 0 and b - r not in beta:
            leg = sum(1 for c in beta if b - r < c < b)
            moved = sorted(beta - {b} | {b - r}, reverse=True)
            smaller = tuple(x - (len(moved) - 1 - i) for i, x in enumerate(moved))
            total += (-1) ** leg * murnaghan_nakayama(tuple(p for p in smaller if p), rest)
    return total


def young_matrices(group: Group, lam: tuple[int, ...]) -> np.ndarray:
    """Young's orthogonal form of partition lam on every element: float [n, d, d], d = #standard tableaux.

    Generators s_i swap the i-th and (i+1)-th moved points; every element is reached from the
    identity by breadth-first search over right multiplication by the s_i.
    """
    gens = _young_generators(lam)  # [m - 1, d, d]
    points = support(group)
    perms, table = group.permutations, group.table
    # 1) the adjacent transpositions as element indices
    index = {p.tobytes(): x for x, p in enumerate(perms)}
    swaps = []
    for i in range(len(points) - 1):
        p = np.arange(perms.shape[1], dtype=perms.dtype)
        p[[points[i], points[i + 1]]] = p[[points[i + 1], points[i]]]
        swaps.append(index[p.tobytes()])
    # 2) rho(x s_i) = rho(x) rho(s_i)
    d = gens.shape[1]
    rho = np.zeros((group.order, d, d))
    done = np.zeros(group.order, dtype=bool)
    rho[group.identity], done[group.identity] = np.eye(d), True
    queue = [group.identity]
    for x in queue:
        for i, s in enumerate(swaps):
            y = table[x, s]
            if not done[y]:
                rho[y], done[y] = rho[x] @ gens[i], True
                queue.append(y)
    return rho


def _young_generators(lam: tuple[int, ...]) -> np.ndarray:
    """Float [m - 1, d, d]: rho(s_i) T = T / a + sqrt(1 - 1/a^2) s_i T, a = content(i+1) - content(i)."""
    tableaux = _standard_tableaux(lam)
    where = {t: index for index, t in enumerate(tableaux)}
    m, d = sum(lam), len(tableaux)
    gens = np.zeros((max(m - 1, 0), d, d))
    for i in range(m - 1):
        for index, t in enumerate(tableaux):
            (r0, c0), (r1, c1) = t[i], t[i + 1]
            axial = (c1 - r1) - (c0 - r0)  # +1: same row, -1: same column, else |axial| >= 2
            gens[i, index, index] = 1 / axial
            if abs(axial) > 1:
                swapped = t[:i] + (t[i + 1], t[i]) + t[i + 2:]
                gens[i, where[swapped], index] = math.sqrt(1 - 1 / axial**2)
    return gens


def _standard_tableaux(lam: tuple[int, ...]) -> list[tuple[tuple[int, int], ...]]:
    """Standard Young tableaux of shape lam, each as the (row, column) box of entries 0..m-1."""
    found, lengths, boxes = [], [0] * len(lam), []

    def grow() -> None:
        if len(boxes) == sum(lam):
            found.append(tuple(boxes))
            return
        for row, column in enumerate(lengths):
            if column < lam[row] and (row == 0 or lengths[row - 1] > column):
                lengths[row] += 1
                boxes.append((row, column))
                grow()
                boxes.pop()
                lengths[row] -= 1

    grow()
    return found
