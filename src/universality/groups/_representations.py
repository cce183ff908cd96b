"""Real irreps, their isotypic projectors on R^|G|, and explicit irrep matrices.

| function         | returns                                              | shape           |
|------------------|------------------------------------------------------|-----------------|
| `real_irreps`    | `RealIrrep` per real irreducible representation      | list            |
| `projector`      | orthogonal projector onto its isotypic block of R^G  | float [n, n]    |
| `irrep_matrices` | rho(g) for every element g                           | [n, d, d]       |

A complex irrep chi of dimension d with Frobenius–Schur indicator 1 is real (dimension d, character chi);
a conjugate pair chi, conj(chi) (indicator 0) merges into one real irrep of dimension 2d, character 2 Re chi;
a quaternionic chi (indicator -1) gives one of dimension 2d, character 2 chi. Its commutant has real
dimension e = 1, 2, 4 and its isotypic block of the regular representation R^G has rank dim^2 / e.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UniversalityError
from ._characters import character_table, frobenius_schur, irrep_labels, partition_of
from ._group import Group
from ._symmetric import young_matrices

__all__ = ["RealIrrep", "irrep_matrices", "projector", "real_irreps"]

_COMMUTANT = {1: 1, 0: 2, -1: 4}  # indicator -> real dimension of End_G: R, C, H
_ATTEMPTS = 10  # random commuting operators tried before giving up on splitting the isotypic block


@dataclass(frozen=True, eq=False)
class RealIrrep:
    """One real irreducible representation of a finite group.

    label : "chi2", "(3,1)", or "a+b" for a merged conjugate pair
    character : float [order], the real character on every element
    dim : the real dimension: d (real type), 2d (conjugate pair or quaternionic)
    indicator : Frobenius–Schur indicator of its complex constituent(s): 1, 0 or -1
    rows : its rows of `character_table`: one, or the conjugate pair
    """

    label: str
    character: np.ndarray
    dim: int
    indicator: int
    rows: tuple[int, ...]


def real_irreps(group: Group) -> list[RealIrrep]:
    """The real irreps in character-table order, each conjugate pair once (at its first row).

    >>> from universality.groups import make_group
    >>> [(r.label, r.dim) for r in real_irreps(make_group("C3"))]
    [('k=0', 1), ('k=1+k=2', 2)]
    """
    chi = character_table(group)[:, group.class_of]  # [irreps, n]
    labels, indicators = irrep_labels(group), frobenius_schur(group)
    found, paired = [], set()
    for i, (row, indicator) in enumerate(zip(chi, indicators)):
        if i in paired:
            continue
        d = round(row[group.identity].real)
        if indicator == 1:
            found.append(RealIrrep(labels[i], row.real.copy(), d, 1, (i,)))
        elif indicator == -1:
            found.append(RealIrrep(labels[i], 2 * row.real, 2 * d, -1, (i,)))
        else:
            j = next(j for j in range(i + 1, len(chi)) if np.allclose(chi[j], row.conj(), atol=1e-8))
            paired.add(j)
            found.append(RealIrrep(f"{labels[i]}+{labels[j]}", 2 * row.real, 2 * d, 0, (i, j)))
    return found


def projector(group: Group, irrep: RealIrrep) -> np.ndarray:
    """Float [n, n]: P[x, y] = dim psi(x y^-1) / (e |G|), the isotypic block of `irrep` in R^G.

    This equals d chi(x y^-1) / |G| summed over the complex constituents; symmetric, idempotent,
    of rank dim^2 / e, and the projectors of all real irreps sum to the identity.
    """
    quotients = group.table[:, group.inverse]  # x y^-1, [n, n]
    return irrep.dim * irrep.character[quotients] / (_COMMUTANT[irrep.indicator] * group.order)


def irrep_matrices(group: Group, irrep: int | str, *, seed: int = 0) -> np.ndarray:
    """rho(g) for every element: [n, d, d], real orthogonal (float) for real-type irreps, unitary (complex) else.

    irrep : row of `character_table` or its label from `irrep_labels`
    Full symmetric groups use Young's orthogonal form; others split the isotypic block of the
    regular representation numerically (seeded by `seed`).
    """
    labels = irrep_labels(group)
    if isinstance(irrep, str):
        if irrep not in labels:
            raise UniversalityError(f"group {group.name!r} has no irrep {irrep!r}; choose one of: {', '.join(labels)}")
        irrep = labels.index(irrep)
    if not 0 <= irrep < len(labels):
        raise UniversalityError(f"group {group.name!r} has irreps 0..{len(labels) - 1}, not {irrep}; "
                                f"pick a row of character_table")
    partition = partition_of(group, irrep)
    if partition is not None:
        return young_matrices(group, partition)
    return _numeric_matrices(group, irrep, seed)


def _numeric_matrices(group: Group, row: int, seed: int) -> np.ndarray:
    """Split the chi-isotypic block of the left regular representation into d copies; keep one."""
    n, table, inverse = group.order, group.table, group.inverse
    chi = character_table(group)[row][group.class_of]  # [n]
    d = round(chi[group.identity].real)
    real = frobenius_schur(group)[row] == 1
    rng = np.random.default_rng(seed)
    # 1) isotypic projector P = d/|G| sum_g conj(chi(g)) L(g): P[x, y] = d conj(chi(x y^-1)) / |G|, rank d^2
    block = d * np.conj(chi)[table[:, inverse]] / n  # [n, n]
    if real:
        block = block.real
    basis, _ = np.linalg.qr(block @ rng.standard_normal((n, d * d)))  # orthonormal [n, d^2]
    # 2) one d-dimensional invariant subspace of the block
    space = basis if d == 1 else _one_copy(group, basis, d, real, rng)  # [n, d]
    # 3) rho(g) = Q^H L(g) Q with (L(g) Q)[x] = Q[g^-1 x]
    adjoint = space.conj().T  # [d, n]
    return np.stack([adjoint @ space[table[inverse[g]]] for g in range(n)])


def _one_copy(group: Group, basis: np.ndarray, d: int, real: bool, rng: np.random.Generator) -> np.ndarray:
    """[n, d]: an orthonormal basis of one irreducible subspace of the isotypic block spanned by `basis` [n, d^2].

    H = sum_j c_j T_gj + conj(c_j) T_gj^-1, with (T_g v)[x] = v[x g], commutes with every L(h), so its
    eigenspaces in the block are invariant; a generic H has d distinct eigenvalues there, d-fold each.
    Real c_j keep the basis real for real-type irreps; complex c_j break the pairing of quaternionic ones.
    """
    table, inverse = group.table, group.inverse
    for _ in range(_ATTEMPTS):
        picks = rng.choice(group.order, size=min(group.order, 8), replace=False)
        coeffs = rng.standard_normal(len(picks)) + (0 if real else 1j * rng.standard_normal(len(picks)))
        moved = sum(c * basis[table[:, g]] + np.conj(c) * basis[table[:, inverse[g]]] for c, g in zip(coeffs, picks))
        restricted = basis.conj().T @ moved  # [d^2, d^2], Hermitian
        values, vectors = np.linalg.eigh((restricted + restricted.conj().T) / 2)
        if values[d] - values[d - 1] > 1e-6 * max(1.0, np.abs(values).max()):
            return basis @ vectors[:, :d]
    raise RuntimeError(f"could not split an isotypic block of {group.name} into invariant subspaces")
