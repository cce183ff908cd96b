"""Similarity of two unit sets from token rows (a reservoir sample): what the moment state cannot give.

| input | shape          | meaning                                                       |
|-------|----------------|---------------------------------------------------------------|
| x     | [rows, n_a]    | unit set a's activations on the sampled tokens                |
| y     | [rows, n_b]    | unit set b's on the same tokens, row for row                  |
| order | int64 [rows]   | a permutation of y's rows (a token-shuffled partner), or None |

- Debiased linear CKA: CKA with the unbiased HSIC estimator of Song et al. 2012 (eq. 5) on linear kernels
  K = X X^T, L = Y Y^T of the centred rows, as Kornblith et al.'s debiased CKA; about 0 for independent
  sets at any rows and widths, where biased CKA is not (`linear_cka`). Computed in feature space, so no
  [rows, rows] kernel is held: with K~, L~ the kernels with zero diagonals and centred features
  (X^T 1 = 0, so K~ 1 = -diag K),
      tr(K~ L~) = ||X^T Y||_F^2 - d_x . d_y,  1^T K~ 1 = -sum d_x,  1^T K~ L~ 1 = d_x . d_y,
  d the squared row norms. NaN when a side's unbiased HSIC with itself is <= 0 (a dead set, or so few
  rows that the estimate is not positive).
- Mutual k-NN alignment (Huh et al. 2024, "platonic representation"; their metrics.py): rows are scaled
  to unit norm (not centred), each row's k nearest other rows by cosine similarity are found in A and in
  B, and the score is the mean over rows of |N_A(i) & N_B(i)| / k. Chance is k / (rows - 1). Their
  outlier clipping (activations clamped at the 0.95 quantile) is a preprocessing choice left out here.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._defaults import KNN_NEIGHBOURS
from .._inputs import as_float64_tensor
from ..errors import UniversalityError

__all__ = ["debiased_cka", "mutual_knn", "TokenSide", "token_side", "debiased_cka_from", "neighbours",
           "knn_overlap", "shuffled_neighbours"]

_CHUNK = 1024  # rows of the cosine-similarity matrix held at a time ([1024, rows] float64)


class TokenSide(NamedTuple):
    """One unit set's rows, prepared for debiased CKA (`token_side`)."""
    centred: torch.Tensor  # float64 [rows, n]: rows minus their mean
    norms: torch.Tensor  # float64 [rows]: squared norms of the centred rows (the kernel's diagonal)
    hsic: float  # unbiased HSIC of the set with itself


def _unbiased_hsic(cross_sq, norms_x: torch.Tensor, norms_y: torch.Tensor) -> float:
    """Song et al. 2012 eq. 5 for centred linear kernels, from ||X^T Y||_F^2 and the squared row norms [rows]."""
    n = len(norms_x)
    dot = float(norms_x @ norms_y)
    total = float(cross_sq) - dot + float(norms_x.sum() * norms_y.sum()) / ((n - 1) * (n - 2)) - 2 * dot / (n - 2)
    return total / (n * (n - 3))


def token_side(x: torch.Tensor) -> TokenSide:
    """`TokenSide` of rows x [rows >= 4, n] (any real dtype; computed in float64)."""
    centred = x.double() - x.double().mean(dim=0)
    norms = (centred ** 2).sum(dim=1)
    return TokenSide(centred, norms, _unbiased_hsic((centred.T @ centred).pow(2).sum(), norms, norms))


def debiased_cka_from(a: TokenSide, b: TokenSide, cross: torch.Tensor, order: torch.Tensor | None = None) -> float:
    """Debiased CKA of a and b's rows taken in `order` (None: as they are), given cross =
    a.centred^T b.centred[order] [n_a, n_b]."""
    if not (a.hsic > 0 and b.hsic > 0):
        return math.nan
    norms_b = b.norms if order is None else b.norms[order]
    return _unbiased_hsic(cross.pow(2).sum(), a.norms, norms_b) / math.sqrt(a.hsic * b.hsic)


def neighbours(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices int64 [rows, k] of each row's k most cosine-similar other rows of x [rows, n], most similar
    first. A zero row has cosine 0 with every row; ties go to the lower index."""
    unit = x.double() / x.double().norm(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)
    found = []
    for start in range(0, len(unit), _CHUNK):
        similarity = unit[start:start + _CHUNK] @ unit.T  # [chunk, rows]
        rows = torch.arange(start, start + len(similarity))
        similarity[rows - start, rows] = -math.inf  # a row is not its own neighbour
        found.append(torch.sort(similarity, dim=1, descending=True, stable=True).indices[:, :k])
    return torch.cat(found)


def shuffled_neighbours(nn: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The neighbours [rows, k] of the rows taken in `order` (row i is old row order[i]), from theirs: the
    neighbours of new row i are the new positions of old row order[i]'s neighbours."""
    position = torch.argsort(order)  # old row -> new row
    return position[nn[order]]


def knn_overlap(nn_a: torch.Tensor, nn_b: torch.Tensor) -> float:
    """Mean over rows of |N_A(i) & N_B(i)| / k, for neighbour indices [rows, k] of both sides."""
    shared = (nn_a[:, :, None] == nn_b[:, None, :]).any(dim=2).sum(dim=1)  # [rows]
    return float(shared.double().mean() / nn_a.shape[1])


def _rows(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked float64 rows of both sides, the same number of rows."""
    x = as_float64_tensor(x, "x", {"rows": None, "units_a": None})
    y = as_float64_tensor(y, "y", {"rows": x.shape[0], "units_b": None})
    return x, y


def debiased_cka(x, y) -> float:
    """Debiased linear CKA (unbiased HSIC, Song et al. 2012) of rows x [rows, n_a] and y [rows, n_b].

    About 0 (either sign) for independent sets; 1 for a set against itself. Needs rows >= 4.

    >>> x = torch.randn(100, 6, dtype=torch.float64)
    >>> round(debiased_cka(x, 3 * x), 6)
    1.0
    """
    x, y = _rows(x, y)
    if len(x) < 4:
        raise UniversalityError(f"debiased CKA needs at least 4 rows (the unbiased HSIC divides by n - 3), "
                                f"got {len(x)}")
    a, b = token_side(x), token_side(y)
    return debiased_cka_from(a, b, a.centred.T @ b.centred)


def mutual_knn(x, y, k: int = KNN_NEIGHBOURS) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024) of rows x [rows, n_a] and y [rows, n_b]:
    mean over rows of the fraction of its k cosine nearest neighbours shared by both; chance k / (rows - 1).

    >>> x = torch.randn(50, 6, dtype=torch.float64)
    >>> mutual_knn(x, 2 * x, k=5)
    1.0
    """
    x, y = _rows(x, y)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < len(x):
        raise UniversalityError(f"k must be an integer in [1, rows - 1] = [1, {len(x) - 1}] (a row is not its own "
                                f"neighbour), got k={k!r}; lower k or pass more rows")
    return knn_overlap(neighbours(x, k), neighbours(y, k))
