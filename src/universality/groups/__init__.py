"""Finite groups and their irreducible representations (numpy only).

- `Group`: a dense Cayley table with element labels and conjugacy classes
- `make_group("C12" | "D6" | "S5" | "A5" | "C6xC2")`, `permutation_group(generators)`, `direct_product(g, h)`
- `character_table`, `irrep_labels`, `frobenius_schur`: exact for S_n (Murnaghan–Nakayama), else Dixon–Schneider
- `real_irreps`, `projector`, `irrep_matrices`: real irreps, isotypic projectors on R^|G|, explicit matrices

>>> from universality.groups import make_group, character_table
>>> character_table(make_group("S3")).real.astype(int)
array([[ 1,  1,  1],
       [ 1, -1,  1],
       [ 2,  0, -1]])
"""

from ._characters import character_table, frobenius_schur, irrep_labels
from ._series import make_group
from ._group import Group, direct_product, permutation_group
from ._representations import RealIrrep, irrep_matrices, projector, real_irreps

__all__ = ["Group", "make_group", "permutation_group", "direct_product", "character_table", "irrep_labels",
           "frobenius_schur", "RealIrrep", "real_irreps", "projector", "irrep_matrices"]
