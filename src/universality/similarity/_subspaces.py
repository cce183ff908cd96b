"""Subspace universality: principal angles between two unit sets' top principal subspaces, from the state.

| input  | shape      | meaning                                                       |
|--------|------------|---------------------------------------------------------------|
| G_a    | [n_a, n_a] | sum over tokens of (x_a - mean_a)(x_a - mean_a)^T             |
| G_b    | [n_b, n_b] | the same for unit set b                                       |
| C      | [n_a, n_b] | sum over tokens of (x_a - mean_a)(x_b - mean_b)^T             |

Two models' unit sets have different bases, so their principal subspaces (spans of the top eigenvectors
of G_a and of G_b) lie in different spaces. The common space is the tokens: side a's top k_a principal
component scores X_a V_a[:, :k_a] [tokens, k_a] span a subspace of R^tokens, and the principal angles
between the two sides' spans (Bjorck & Golub 1973) have as cosines the canonical correlations of the two
score matrices. With S_a = V_a diag(l_a) V_a^T and T = V_a^T S_ab V_b (`eigen_cross`), the whitened scores'
cross-product is diag(l_a)^-1/2 T[:k_a, :k_b] diag(l_b)^-1/2, and its singular values are the cosines
(`kept_cosines`): no token rows are needed. SVCCA is their mean with 0.99 of the variance kept.

Invariances: an orthogonal map or an isotropic scaling of either unit set leaves the cosines as they are;
a general linear map does not (principal components depend on the units' scales).
"""

from __future__ import annotations

import torch

from .._defaults import SUBSPACE_VARIANCE
from ..errors import UniversalityError, short_repr
from ._state_metrics import checked_pair, kept_cosines, kept_directions

__all__ = ["principal_angles"]


def principal_angles(gram_a, gram_b, cross, tokens: int, *, k: int | None = None,
                     variance: float = SUBSPACE_VARIANCE) -> torch.Tensor:
    """Cosines of the principal angles between two unit sets' top principal subspaces, seen through the
    tokens (module docstring): float64 [min(k_a, k_b)] in [0, 1], descending; 1 is a shared direction.

    gram_a [n_a, n_a], gram_b [n_b, n_b], cross [n_a, n_b]: centred co-moment sums over `tokens` tokens.
    k : int >= 1 or None, default=None
        Principal directions kept on both sides, at most each side's rank; None: chosen per side by `variance`.
    variance : float in (0, 1], default=0.9
        With k None, each side keeps its fewest top directions holding this fraction of its variance.

    >>> g = torch.Generator().manual_seed(0)
    >>> z = 10 * torch.randn(1000, 2, generator=g, dtype=torch.float64)  # a strong latent both sides carry
    >>> x = torch.cat([z, torch.randn(1000, 3, generator=g, dtype=torch.float64)], dim=1); x -= x.mean(0)
    >>> y = torch.cat([z.flip(1), torch.randn(1000, 2, generator=g, dtype=torch.float64)], dim=1); y -= y.mean(0)
    >>> (principal_angles(x.T @ x, y.T @ y, x.T @ y, 1000, k=3) > 0.99).tolist()
    [True, True, False]
    """
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise UniversalityError(f"k must be an integer >= 1 (principal directions per side) or None (chosen by "
                                f"variance), got {short_repr(k)}")
    if isinstance(variance, bool) or not isinstance(variance, (int, float)) or not 0 < variance <= 1:
        raise UniversalityError(f"variance must be a fraction in (0, 1] (of each side's variance kept), "
                                f"got {short_repr(variance)}")
    a, b, t = checked_pair(gram_a, gram_b, cross, tokens)
    ranks = []
    for side, s in (("a", a), ("b", b)):
        rank = len(s.values)  # the directions of positive variance (`spectrum` drops rounding of 0)
        if rank == 0:
            raise UniversalityError(f"unit set {side} has no variance (every unit constant over the tokens): it "
                                    "spans no subspace")
        if k is not None and k > rank:
            raise UniversalityError(f"k={k} exceeds the rank of unit set {side} ({rank} directions with variance); "
                                    f"pass k <= {rank}, or k=None to choose by variance")
        ranks.append(k if k is not None else min(kept_directions(s.values, float(variance)), rank))
    return kept_cosines(a, b, t, *ranks)
