"""Character tables: exact for symmetric groups, Burnside–Dixon–Schneider for every other group.

| function           | returns                  | shape                 |
|--------------------|--------------------------|-----------------------|
| `character_table`  | chi_i(class t), complex  | [irreps, classes]     |
| `irrep_labels`     | one label per irrep      | irreps str            |
| `frobenius_schur`  | 1 real, 0 complex, -1 quaternionic | int [irreps] |

Irreps are sorted by dimension, trivial first. Ties: S_n by partition, (n) first; C_n by the frequency
k of chi(g) = exp(2 pi i k / n) with g the first generator; otherwise by character values, descending.
Numeric method: J. D. Dixon, "High speed computation of group characters", Numer. Math. 10 (1967);
G. J. A. Schneider, J. Symbolic Comput. 9 (1990).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import UniversalityError
from ._group import Group
from ._symmetric import cycle_type, murnaghan_nakayama, partitions, support, symmetric_degree

__all__ = ["character_table", "frobenius_schur", "irrep_labels", "partition_of"]

_METHODS = ("auto", "murnaghan-nakayama", "dixon-schneider")
_CLEAN = 1e-9  # values within this of a multiple of 1/2 (real and imaginary part) are snapped to it
_ATTEMPTS = 10  # random class-matrix combinations tried before giving up on distinct eigenvalues


@dataclass(frozen=True)
class _Characters:
    values: np.ndarray  # complex [irreps, classes]
    labels: tuple[str, ...]
    partitions: tuple[tuple[int, ...], ...] | None  # one per irrep for S_n


def character_table(group: Group, *, method: str = "auto") -> np.ndarray:
    """Complex [irreps, classes]: chi_i on each class of `group.classes`, rows sorted (see module doc).

    method : {'auto', 'murnaghan-nakayama', 'dixon-schneider'}, default='auto'
        'auto' is Murnaghan–Nakayama for full symmetric groups, Dixon–Schneider otherwise.

    >>> from universality.groups import make_group
    >>> character_table(make_group("C2")).real
    array([[ 1.,  1.],
           [ 1., -1.]])
    """
    return _characters(group, method).values.copy()


def irrep_labels(group: Group) -> list[str]:
    """One label per irrep, in table order: "(4,1)" for S_n, "k=3" for C_n, "chi0", "chi1", ... otherwise."""
    return list(_characters(group, "auto").labels)


def partition_of(group: Group, irrep: int) -> tuple[int, ...] | None:
    """The partition labelling row `irrep` when `group` is a full symmetric group, else None."""
    found = _characters(group, "auto").partitions
    return None if found is None else found[irrep]


def frobenius_schur(group: Group) -> np.ndarray:
    """Int [irreps]: (1/|G|) sum_g chi(g^2); 1 real, 0 not real-valued, -1 quaternionic."""
    chi = character_table(group)[:, group.class_of]  # [irreps, n]
    squares = group.table[np.arange(group.order), np.arange(group.order)]  # [n]
    indicator = chi[:, squares].sum(axis=1) / group.order
    rounded = np.rint(indicator.real).astype(np.int64)
    if np.abs(indicator - rounded).max() > 1e-6:
        raise RuntimeError(f"Frobenius–Schur indicators of {group.name} are not integers: {indicator}")
    return rounded


@lru_cache(maxsize=16)
def _characters(group: Group, method: str) -> _Characters:
    if method not in _METHODS:
        raise UniversalityError(f"unknown method {method!r}; choose one of: {', '.join(_METHODS)}")
    exact = symmetric_degree(group) is not None
    if method == "murnaghan-nakayama" and not exact:
        raise UniversalityError(f"group {group.name!r} is not a full symmetric group; use method='auto' or "
                                f"'dixon-schneider'")
    result = _symmetric_characters(group) if exact and method != "dixon-schneider" else _numeric_characters(group)
    result.values.setflags(write=False)
    return result


def _symmetric_characters(group: Group) -> _Characters:
    """Murnaghan–Nakayama on each class's cycle type; rows by (dimension, partition descending)."""
    points = support(group)
    mus = [cycle_type(group.permutations[members[0]], points) for members in group.classes]
    lams = list(partitions(len(points)))
    values = np.array([[murnaghan_nakayama(lam, mu) for mu in mus] for lam in lams], dtype=complex)
    order = sorted(range(len(lams)), key=lambda i: (values[i, 0].real, [-p for p in lams[i]]))
    labels = tuple("(" + ",".join(map(str, lams[i])) + ")" for i in order)
    return _Characters(values[order], labels, tuple(lams[i] for i in order))


def _numeric_characters(group: Group) -> _Characters:
    """Dixon–Schneider, cleaned, then sorted: C_n by frequency k, others by (dimension, values descending)."""
    values = _clean(_dixon_schneider(group))
    generator = _cyclic_generator(group)
    if generator is not None:
        turns = np.angle(values[:, group.class_of[generator]]) / (2 * np.pi)
        frequency = np.rint(turns * group.order).astype(np.int64) % group.order
        order = np.argsort(frequency)
        return _Characters(values[order], tuple(f"k={k}" for k in frequency[order]), None)
    keys = [(round(row[0].real), [(-round(v.real, 6), -round(v.imag, 6)) for v in row]) for row in values]
    order = sorted(range(len(values)), key=keys.__getitem__)
    return _Characters(values[order], tuple(f"chi{i}" for i in range(len(order))), None)


def _dixon_schneider(group: Group, seed: int = 0) -> np.ndarray:
    """Complex [irreps, classes], rows unsorted, as common eigenvectors of the class-sum matrices.

    With C_r C_s = sum_t c_rst C_t and omega_i(C_r) = |C_r| chi_i(g_r) / chi_i(1), the vector
    (omega_i(C_t))_t is an eigenvector of every M_r[s, t] = c_rst with eigenvalue omega_i(C_r).
    """
    n, k, table = group.order, len(group.classes), group.table
    sizes = np.array([len(members) for members in group.classes])  # [k]
    rng = np.random.default_rng(seed)
    for _ in range(_ATTEMPTS):
        # 1) A = sum_r a_r M_r, A[s, t] = sum over x with x^-1 z_t in C_s of a_class(x) (z_t: t's representative)
        a = rng.standard_normal(k)
        combined = np.empty((k, k))
        for t, members in enumerate(group.classes):
            quotients = table[group.inverse, members[0]]  # x^-1 z_t for every x, [n]
            combined[:, t] = np.bincount(group.class_of[quotients], weights=a[group.class_of], minlength=k)
        # 2) a random combination has distinct eigenvalues (central characters separate irreps)
        eigenvalues, vectors = np.linalg.eig(combined)  # vectors [classes, irreps]
        gaps = np.abs(eigenvalues[:, None] - eigenvalues[None, :]) + np.diag(np.full(k, np.inf))
        if gaps.min() > 1e-6 * max(1.0, np.abs(eigenvalues).max()):
            break
    else:
        raise RuntimeError(f"no random class-matrix combination of {group.name} had distinct eigenvalues")
    # 3) omega(identity class) = 1; chi(1)^2 sum_t |omega_t|^2 / |C_t| = |G| (first orthogonality relation)
    omega = (vectors / vectors[0]).T  # [irreps, classes]
    dims = np.sqrt(n / (np.abs(omega) ** 2 / sizes).sum(axis=1))  # [irreps]
    if np.abs(dims - np.rint(dims)).max() > 1e-6:
        raise RuntimeError(f"Dixon–Schneider on {group.name} gave non-integer dimensions {dims}")
    return np.rint(dims)[:, None] * omega / sizes


def _clean(values: np.ndarray) -> np.ndarray:
    """Snap real and imaginary parts within `_CLEAN` of a multiple of 1/2 onto it."""
    def snap(x: np.ndarray) -> np.ndarray:
        half = np.rint(2 * x) / 2
        return np.where(np.abs(x - half) < _CLEAN, half, x)
    return snap(values.real) + 1j * snap(values.imag)


def _cyclic_generator(group: Group) -> int | None:
    """The first element of order |G| when `group` is cyclic, else None."""
    if len(group.classes) != group.order:
        return None  # not abelian
    n, power = group.order, np.arange(group.order)
    first_return = np.zeros(n, dtype=np.int64)  # order of each element, filled as powers reach e
    for exponent in range(1, n + 1):
        first_return[(power == group.identity) & (first_return == 0)] = exponent
        if first_return.all():
            break
        power = group.table[power, np.arange(n)]
    full = np.flatnonzero(first_return == n)
    return int(full[0]) if full.size else None
