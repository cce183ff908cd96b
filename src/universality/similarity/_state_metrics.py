"""Similarity of two unit sets from their centred co-moment sums: the state a single pass leaves.

| symbol | shape      | meaning                                                       |
|--------|------------|---------------------------------------------------------------|
| G_a    | [n_a, n_a] | sum over tokens of (x_a - mean_a)(x_a - mean_a)^T (`gram_`)    |
| G_b    | [n_b, n_b] | the same for unit set b                                       |
| C      | [n_a, n_b] | sum over tokens of (x_a - mean_a)(x_b - mean_b)^T             |
| N      | int        | tokens; S_a = G_a / N, S_b = G_b / N, S_ab = C / N             |

Everything is float64, in the eigenbases of the covariances (`Spectrum`): with S_a = V_a diag(l_a) V_a^T,
the rotated cross-covariance T = V_a^T S_ab V_b [r_a, r_b] holds all a pair needs, so each unit set is
decomposed once however many partners it has. Only the r directions of positive variance are kept
(eigenvalues within rounding of 0 dropped, r <= min(n, N - 1)): the tokens span nothing in the others,
so the cross-covariance vanishes there and no score changes, while a unit set wider than its tokens
costs r^3 per pair instead of n^3 (a 1536-wide set over 384 tokens: 383 directions).

| metric     | definition                                                     | symmetric | self |
|------------|----------------------------------------------------------------|-----------|------|
| cka        | ||S_ab||_F^2 / (||S_a||_F ||S_b||_F) (linear CKA, biased HSIC)  | yes       | 1    |
| procrustes | ||S_ab||_* / sqrt(tr S_a tr S_b)                               | yes       | 1    |
| cca        | mean canonical correlation with a ridge (`canonical`)          | yes       | 1    |
| svcca      | mean canonical correlation of the top-variance directions      | yes       | 1    |
| pwcca      | canonical correlations weighted by side a's activations        | no        | 1    |
| regression | ridge R^2 of b from a (and a from b): fraction of variance     | no        | ~1   |

Procrustes (Williams et al. 2021, Ding et al. 2021): with X, Y the centred token matrices scaled to unit
Frobenius norm (||X||_F^2 = tr G_a), similarity = max over orthogonal Q of tr(X^T Y Q) = ||X^T Y||_* =
||C||_* / sqrt(tr G_a tr G_b); the Procrustes distance is sqrt(2 - 2 similarity). Unequal widths are
compared as if the narrower side were padded with zero units.

The ridge (default `SIMILARITY_RIDGE` = 1e-3) is scale-free: S -> S + ridge * (tr S / n) I, so any
ridge > 0 makes a rank-deficient covariance (a unit set wider than its tokens) invertible; ridge 0 is
the plain metric with a pseudo-inverse (the directions without variance are not in the spectrum). CCA and PWCCA read 1 for a set against itself at any ridge
(`canonical`); ridge regression R^2 of a set from itself is 1 minus at most `ridge` (shrinkage is real).

Invariances: every metric is unchanged by an orthogonal map (and an isotropic scaling) of either unit
set, except PWCCA, whose weights are read in side a's unit basis (it is unchanged under any map of b).
At ridge 0, CCA is unchanged under any invertible linear map. So a Haar-rotated partner would leave
every score here as it is: no rotation null is computed (compare_representations says so).

A dead unit set (zero total variance: every unit constant) has no similarity: every metric is NaN.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._defaults import SIMILARITY_RIDGE, SVCCA_VARIANCE
from .._inputs import as_float64_tensor
from ..errors import UniversalityError

__all__ = ["linear_cka", "cca", "svcca", "pwcca", "procrustes", "regression_r2", "Spectrum", "spectrum",
           "eigen_cross", "state_scores", "state_outputs", "check_ridge", "checked_pair", "kept_directions",
           "kept_cosines", "Canonical", "canonical", "thin_svd", "mean_cca_from", "cka_from", "STATE_METRICS"]

STATE_METRICS = ("cka", "cca", "svcca", "pwcca", "procrustes", "regression")
_SVD_FLOOR = 1e-4  # `thin_svd` divides by singular values down to this fraction of the largest
_OUTPUTS = {"regression": ("regression_b_from_a", "regression_a_from_b")}  # metric -> table rows


class Spectrum(NamedTuple):
    """One unit set's covariance S = G / N = vectors diag(values) vectors^T, float64, over its r directions
    of positive variance (`spectrum`)."""
    values: torch.Tensor  # [r] eigenvalues, descending, each above rounding of 0
    vectors: torch.Tensor  # [n, r] their eigenvectors as columns (unit basis -> eigenbasis)
    width: int  # n, the units: the ridge's mean variance is tr S / n


class Canonical(NamedTuple):
    """The ridge-regularised canonical correlation analysis of a pair (`canonical`); k = min(r_a, r_b)."""
    correlations: torch.Tensor  # [k] regularised canonical correlations rho_i, descending
    scales: torch.Tensor  # [k] s_i >= rho_i: the largest value rho_i could take (s_i = 1 at ridge 0)
    variates_a: torch.Tensor  # [r_a, k] side a's canonical variates, in the coordinates of `pwcca_from`


def spectrum(gram: torch.Tensor, tokens: int) -> Spectrum:
    """The eigendecomposition of S = gram / tokens (gram [n, n], a centred co-moment sum), cut to the
    eigenvalues above n eps times the largest (none for a dead set): the rest are rounding of 0."""
    values, vectors = torch.linalg.eigh(gram.double() / tokens)  # ascending
    values, vectors = values.flip(0), vectors.flip(1)
    rank = int((values > len(values) * torch.finfo(torch.float64).eps * values.max()).sum())
    return Spectrum(values[:rank], vectors[:, :rank], len(values))


def eigen_cross(cross: torch.Tensor, a: Spectrum, b: Spectrum, tokens: int) -> torch.Tensor:
    """T = V_a^T (cross / tokens) V_b, float64 [r_a, r_b]: the cross-covariance in both eigenbases."""
    return a.vectors.T @ (cross.double() / tokens) @ b.vectors


def check_ridge(ridge) -> float:
    """`ridge` as a float, or one line unless it is a finite number >= 0."""
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge < 0:
        raise UniversalityError(f"ridge must be a finite number >= 0 (a fraction of each side's mean variance; 0: no "
                                f"regularisation), got {ridge!r}")
    return float(ridge)


def _inverse(s: Spectrum, ridge: float) -> torch.Tensor:
    """1 / (l + ridge * tr S / n) per eigenvalue l [r]; 0 where that is within rounding of 0 (a pseudo-inverse:
    `spectrum` keeps no such eigenvalue, a Spectrum built over every direction may)."""
    shifted = s.values + ridge * s.values.sum() / s.width
    floor = s.width * torch.finfo(torch.float64).eps * shifted.max()
    return torch.where(shifted > floor, 1 / shifted.clamp(min=floor), 0.0)


def canonical(a: Spectrum, b: Spectrum, t: torch.Tensor, ridge: float) -> Canonical:
    """Ridge CCA in the eigenbases: K = (S + ridge (tr S / n) I)^(-1/2) per side, M = K_a S_ab K_b.

    1) The singular values rho_i of M [r_a, r_b] are the regularised canonical correlations, with
       singular vectors p_i, q_i; the canonical variates are u_i = K_a p_i and v_i = K_b q_i.
    2) By Cauchy-Schwarz rho_i = u_i^T S_ab v_i <= s_i = sqrt(u_i^T S_a u_i * v_i^T S_b v_i): s_i is the
       value rho_i would have for perfectly correlated variates. At ridge 0 s_i = 1 (every direction of a
       `spectrum` has variance); a ridge shrinks s_i below 1 in the directions of low variance.
    Then mean CCA = sum rho_i / sum s_i: the mean canonical correlation at ridge 0, and for ridge > 0 the
    plain correlations rho_i / s_i of the regularised variates averaged with weights s_i, so directions
    the ridge suppresses count little (directions without variance are not in the spectrum at all);
    1 for a set against itself.
    """
    root_a, root_b = _inverse(a, ridge).sqrt(), _inverse(b, ridge).sqrt()  # K's eigenvalues
    m = root_a[:, None] * t * root_b[None, :]  # [r_a, r_b] = K_a S_ab K_b
    p, rho, qh = thin_svd(m)  # p [r_a, k], rho [k], qh [k, r_b]
    # X_c u_i = sqrt(N) U diag(sqrt(l_a)) V_a^T u_i (X_c = sqrt(N) U diag(sqrt(l_a)) V_a^T): these coordinates
    # have norm^2 = u_i^T S_a u_i, and `pwcca_from` orthonormalises them.
    variates_a = (a.values.sqrt() * root_a)[:, None] * p  # [r_a, k]
    variates_b = (b.values.sqrt() * root_b)[:, None] * qh.T  # [r_b, k]
    return Canonical(rho, variates_a.norm(dim=0) * variates_b.norm(dim=0), variates_a)


def thin_svd(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """m [r, c] = p diag(rho) qh, as `torch.linalg.svd(m, full_matrices=False)` returns it: p [r, k], rho [k]
    descending, qh [k, c], k = min(r, c); float64.

    From the eigenvectors w_i of the smaller Gram (m m^T or m^T m): rho_i = ||m^T w_i|| (or ||m w_i||) and
    the other side's vector is that image over rho_i. Measured on a 256 x 256 pair of bench_beyond.py, one
    thread: 8.4 ms against LAPACK's 11.5 ms for the SVD with vectors, which every CCA pair of a similarity
    table pays.
    Rounding in w_i reaches the other side's vector as about eps / (rho_i x the gap to the nearest
    rho_j^2) relative to ||m||^2, so where a singular value is below `_SVD_FLOOR` of the largest (a
    rank-deficient m, a dead unit, an empty one) this is LAPACK's SVD itself.
    """
    tall = m.shape[0] > m.shape[1]  # decompose the Gram of the shorter side
    short = m.T if tall else m  # [k, longer]
    vectors = torch.linalg.eigh(short @ short.T)[1]  # [k, k], eigenvalues rho^2 ascending
    images = short.T @ vectors  # [longer, k]: column i is rho_i times the longer side's vector
    rho = images.norm(dim=0)
    if rho.numel() == 0 or not rho.min() > _SVD_FLOOR * rho.max():
        return torch.linalg.svd(m, full_matrices=False)
    order = rho.argsort(descending=True)
    vectors, rho, images = vectors[:, order], rho[order], images[:, order] / rho[order]
    return (images, rho, vectors.T) if tall else (vectors, rho, images.T)


def mean_cca_from(c: Canonical) -> float:
    """Mean canonical correlation sum rho_i / sum s_i (`canonical`)."""
    return float(c.correlations.sum() / c.scales.sum())


def pwcca_from(c: Canonical, a: Spectrum) -> float:
    """Projection-weighted CCA (Morcos et al. 2018), weighted by side a.

    1) Orthonormalise a's canonical variates over tokens, h_i (QR of their coefficients, as the paper's code
       does with np.linalg.qr on the variates).
    2) alpha_i = sum_j |<h_i, z_j>|, z_j the centred activations of a's unit j: how much of a's activity
       direction i accounts for. In coordinates, <h_i, z_j> = sqrt(N) (Q^T diag(sqrt(l_a)) V_a^T)_ij.
    3) PWCCA = sum alpha_i rho_i / sum alpha_i s_i (`canonical`; at ridge 0, sum alpha_i rho_i / sum alpha_i).
    The paper's code weights the side with fewer units: pass that one as a to match it.
    """
    q, _ = torch.linalg.qr(c.variates_a)  # [r_a, k]; a zero column gets some unit vector, weighted by rho = s = 0
    alpha = (q.T @ (a.values.sqrt()[:, None] * a.vectors.T)).abs().sum(dim=1)  # [k]
    return float((alpha * c.correlations).sum() / (alpha * c.scales).sum())


def cka_from(a: Spectrum, b: Spectrum, t: torch.Tensor) -> float:
    """||S_ab||_F^2 / (||S_a||_F ||S_b||_F); Frobenius norms are basis-free, so from T and the eigenvalues."""
    return float((t ** 2).sum() / (a.values.norm() * b.values.norm()))


def procrustes_from(a: Spectrum, b: Spectrum, t: torch.Tensor) -> float:
    """||S_ab||_* / sqrt(tr S_a tr S_b) (nuclear norm: the sum of singular values of T)."""
    return float(torch.linalg.svdvals(t).sum() / (a.values.sum() * b.values.sum()).sqrt())


def svcca_from(a: Spectrum, b: Spectrum, t: torch.Tensor, keep: float) -> float:
    """SVCCA (Raghu et al. 2017): keep each side's top principal directions holding a fraction `keep` of its
    variance, then the mean of the (unregularised) canonical correlations of the kept directions."""
    return float(kept_cosines(a, b, t, kept_directions(a.values, keep), kept_directions(b.values, keep)).mean())


def kept_directions(values: torch.Tensor, keep: float) -> int:
    """The fewest top eigenvalues (descending `values`) whose sum reaches `keep` of the total, all positive."""
    reached = int((values.cumsum(0) < keep * values.sum()).sum()) + 1
    return max(1, min(reached, int((values > 0).sum())))


def kept_cosines(a: Spectrum, b: Spectrum, t: torch.Tensor, ka: int, kb: int) -> torch.Tensor:
    """The canonical correlations [min(ka, kb)], descending, of a's top ka and b's top kb principal component
    scores: the singular values of the whitened kept cross-covariance diag(l_a)^-1/2 T[:ka, :kb] diag(l_b)^-1/2
    (kept eigenvalues > 0); the cosines of the principal angles between the scores' spans over tokens."""
    m = t[:ka, :kb] / (a.values[:ka, None] * b.values[None, :kb]).sqrt()  # [ka, kb]
    return torch.linalg.svdvals(m).clamp(max=1.0)  # rounding can put a shared direction at 1 + 1e-16


def regression_from(a: Spectrum, b: Spectrum, t: torch.Tensor, ridge: float) -> float:
    """R^2 of b from a: the fraction of b's total variance tr S_b that the ridge fit of b on a explains,
    in sample. W = (S_a + ridge (tr S_a / n_a) I)^-1 S_ab; with d_i = 1 / (l_i + ridge tr S_a / n_a), the
    explained variance tr(S_b) - E||b - W^T a||^2 = sum_i ||T_i||^2 (2 d_i - l_i d_i^2) (T_i: row i of T).
    """
    d = _inverse(a, ridge)  # [r_a]
    return float(((t ** 2).sum(dim=1) * d * (2 - a.values * d)).sum() / b.values.sum())


def state_outputs(metrics) -> list[str]:
    """The table rows the metrics give: each metric's name, "regression" two directions."""
    return [name for metric in metrics for name in _OUTPUTS.get(metric, (metric,))]


def state_scores(a: Spectrum, b: Spectrum, t: torch.Tensor, metrics, *, ridge: float = SIMILARITY_RIDGE,
                 keep: float = SVCCA_VARIANCE) -> dict[str, float]:
    """{output name: score} for the state `metrics` of one pair (T = `eigen_cross`); NaN for a dead side."""
    if not (a.values.sum() > 0 and b.values.sum() > 0):
        return dict.fromkeys(state_outputs(metrics), math.nan)
    scores = {}
    c = canonical(a, b, t, ridge) if {"cca", "pwcca"} & set(metrics) else None
    for metric in metrics:
        if metric == "cka":
            scores["cka"] = cka_from(a, b, t)
        elif metric == "cca":
            scores["cca"] = mean_cca_from(c)
        elif metric == "svcca":
            scores["svcca"] = svcca_from(a, b, t, keep)
        elif metric == "pwcca":
            scores["pwcca"] = pwcca_from(c, a)
        elif metric == "procrustes":
            scores["procrustes"] = procrustes_from(a, b, t)
        elif metric == "regression":
            scores["regression_b_from_a"] = regression_from(a, b, t, ridge)
            scores["regression_a_from_b"] = regression_from(b, a, t.T, ridge)
        else:
            raise UniversalityError(f"unknown state metric {metric!r}; choose one of: {', '.join(STATE_METRICS)}")
    return scores


def checked_pair(gram_a, gram_b, cross, tokens) -> tuple[Spectrum, Spectrum, torch.Tensor]:
    """Checked float64 inputs, as the two spectra and T."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise UniversalityError(f"tokens must be an integer >= 1 (the tokens the sums ran over), got {tokens!r}")
    gram_a = as_float64_tensor(gram_a, "gram_a", {"rows": None, "columns": None})
    gram_b = as_float64_tensor(gram_b, "gram_b", {"rows": None, "columns": None})
    for name, gram in (("gram_a", gram_a), ("gram_b", gram_b)):
        if gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
            raise UniversalityError(f"{name} has shape {list(gram.shape)}; a Gram is square [units, units], units >= 1")
    cross = as_float64_tensor(cross, "cross", {"units_a": gram_a.shape[0], "units_b": gram_b.shape[0]})
    a, b = spectrum(gram_a, tokens), spectrum(gram_b, tokens)
    return a, b, eigen_cross(cross, a, b, tokens)


def _score(metric: str, gram_a, gram_b, cross, tokens, output: str | None = None, **settings) -> float:
    """One metric's score (its table row `output`, default its name) from checked inputs."""
    return state_scores(*checked_pair(gram_a, gram_b, cross, tokens), (metric,), **settings)[output or metric]


def linear_cka(gram_a, gram_b, cross, tokens: int) -> float:
    """Linear CKA ||C||_F^2 / (||G_a||_F ||G_b||_F) (Kornblith et al. 2019; the biased HSIC form).

    gram_a [n_a, n_a], gram_b [n_b, n_b], cross [n_a, n_b]: centred co-moment sums over `tokens` tokens.
    In [0, 1]; NaN for a dead side. Biased upwards at few tokens: independent Gaussian sets of width p
    score about p / (p + N - 1) (0.20 for p = 8 at N = 32); `debiased_cka` removes it.

    >>> x = torch.randn(200, 5, dtype=torch.float64); x -= x.mean(0)
    >>> round(linear_cka(x.T @ x, x.T @ x, x.T @ x, 200), 6)
    1.0
    """
    return _score("cka", gram_a, gram_b, cross, tokens)


def procrustes(gram_a, gram_b, cross, tokens: int) -> float:
    """Orthogonal Procrustes similarity ||C||_* / sqrt(tr G_a tr G_b) in [0, 1] (module docstring).

    >>> x = torch.randn(200, 5, dtype=torch.float64); x -= x.mean(0)
    >>> q = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))[0]
    >>> round(procrustes(x.T @ x, (x @ q).T @ (x @ q), x.T @ (x @ q), 200), 6)
    1.0
    """
    return _score("procrustes", gram_a, gram_b, cross, tokens)


def cca(gram_a, gram_b, cross, tokens: int, *, ridge: float = SIMILARITY_RIDGE) -> float:
    """Mean canonical correlation with a ridge, in [0, 1] (`canonical`: sum rho_i / sum s_i).

    ridge : float >= 0, default=1e-3
        Each covariance becomes S + ridge (tr S / n) I; any ridge > 0 gives finite values for unit sets
        wider than their tokens (where plain CCA reads ~1 for anything: compare with a null).

    >>> x = torch.randn(300, 4, dtype=torch.float64); x -= x.mean(0)
    >>> y = x @ torch.randn(4, 4, dtype=torch.float64)  # an invertible map of x
    >>> round(cca(x.T @ x, y.T @ y, x.T @ y, 300, ridge=0.0), 6)
    1.0
    """
    return _score("cca", gram_a, gram_b, cross, tokens, ridge=check_ridge(ridge))


def pwcca(gram_a, gram_b, cross, tokens: int, *, ridge: float = SIMILARITY_RIDGE) -> float:
    """Projection-weighted CCA (Morcos et al. 2018), weights from side a (`pwcca_from`); in [0, 1].

    >>> x = torch.randn(300, 4, dtype=torch.float64); x -= x.mean(0)
    >>> round(pwcca(x.T @ x, x.T @ x, x.T @ x, 300), 6)
    1.0
    """
    return _score("pwcca", gram_a, gram_b, cross, tokens, ridge=check_ridge(ridge))


def svcca(gram_a, gram_b, cross, tokens: int, *, keep: float = SVCCA_VARIANCE) -> float:
    """SVCCA (Raghu et al. 2017): mean canonical correlation of each side's top principal directions
    holding a fraction `keep` (default 0.99) of its variance; no ridge is needed (kept eigenvalues are > 0).

    >>> x = torch.randn(300, 4, dtype=torch.float64); x -= x.mean(0)
    >>> round(svcca(x.T @ x, x.T @ x, x.T @ x, 300), 6)
    1.0
    """
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise UniversalityError(f"keep must be a fraction of variance in (0, 1], got {keep!r}")
    return _score("svcca", gram_a, gram_b, cross, tokens, keep=float(keep))


def regression_r2(gram_a, gram_b, cross, tokens: int, *, ridge: float = SIMILARITY_RIDGE) -> float:
    """R^2 of b from a by ridge least squares (penalty ridge * mean variance of a), in sample, in [0, 1];
    swap the arguments (and transpose `cross`) for a from b. In-sample R^2 reaches 1 as a's width nears
    the tokens: compare with a null. A set from itself: 1 minus at most `ridge`.

    >>> x = torch.randn(300, 4, dtype=torch.float64); x -= x.mean(0)
    >>> y = x[:, :2]  # b is part of a
    >>> round(regression_r2(x.T @ x, y.T @ y, x.T @ y, 300, ridge=0.0), 6)
    1.0
    """
    return _score("regression", gram_a, gram_b, cross, tokens, output="regression_b_from_a", ridge=check_ridge(ridge))
