"""The linear level: SAEs of two models matched after the orthogonal map that best aligns the two
models' activation spaces (orthogonal Procrustes), read from their centred cross-moment.

Convention (scikit-learn's and scipy's `orthogonal_procrustes`' direction): activations are rows,
X_a [tokens, d_a] and X_b [tokens, d_b], centred. The state holds C = X_a^T X_b [d_a, d_b]
(`sum (x_a - mean_a)(x_b - mean_b)^T`, the moment engine's cross-moment with a as rows). The
orthogonal R [d_a, d_b] minimising ||X_a R - X_b||_F maximises tr(R^T C), so R = U V^T from the SVD
C = U S V^T. It maps a's space into b's: a row x_a goes to x_a R ~ x_b, so a decoder (or encoder)
row of a goes to row @ R, and `match_linear` matches `decoder_a @ R` against `decoder_b`.

R does not depend on the SVD's sign choices (flipping u_i and v_i together leaves U V^T unchanged),
and is unique when C has full rank. On one model (C = G, the Gram, positive definite) R = I, so the
linear level equals the direct one. Needs d_a == d_b.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..errors import UniversalityError
from ._match import CANDIDATES, DENSE_LIMIT, as_matrix, match

__all__ = ["procrustes_map", "match_linear"]


def procrustes_map(cross_moment) -> torch.Tensor:
    """float64 orthogonal R [d_a, d_b] = U V^T from C = U S V^T, C [d_a, d_b] the centred cross-moment
    of model a's activations (rows) with model b's: x_a R ~ x_b (module docstring).

    >>> q = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    >>> x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    >>> x = x - x.mean(dim=0)
    >>> torch.allclose(procrustes_map(x.T @ (x @ q)), q.double())
    True
    """
    c = as_matrix(cross_moment, "cross_moment")
    if c.shape[0] != c.shape[1]:
        raise UniversalityError(f"cross_moment has shape {tuple(c.shape)}, but an orthogonal map needs both activation "
                                "spaces of one width (d_a == d_b); compare SAEs of spaces of different width by their "
                                "latent activations (functional level)")
    if not bool(c.any()):
        raise UniversalityError("cross_moment is all zeros, so no map is defined: accumulate the two models' "
                                "activations over some tokens first")
    u, _, vh = torch.linalg.svd(c)  # C = U S V^T, u [d_a, d], vh [d, d_b]
    return u @ vh  # [d_a, d_b]


def match_linear(decoder_a, decoder_b, cross_moment, *, threshold: float = 0.7, encoder_a=None, encoder_b=None,
                 dense_limit: int = DENSE_LIMIT, candidates: int = CANDIDATES) -> pd.DataFrame:
    """`match(decoder_a @ R, decoder_b, ...)` with R = `procrustes_map(cross_moment)` (and the encoder
    rows of a mapped alike), `attrs["level"]` "linear". decoder_a [latents_a, d_a], decoder_b
    [latents_b, d_b], cross_moment [d_a, d_b]; other arguments as `match`'s."""
    r = procrustes_map(cross_moment)
    a = as_matrix(decoder_a, "decoder_a")
    for name, x, side, d in (("decoder_a", a, "rows", r.shape[0]), ("decoder_b", decoder_b, "columns", r.shape[1])):
        width = as_matrix(x, name).shape[1]
        if width != d:
            raise UniversalityError(f"{name} has d_in {width} but cross_moment has {d} {side}; pass the cross-moment "
                                    f"[d_a, d_b] of the two spaces these SAEs read, a's as rows")
    mapped_encoder = None if encoder_a is None else as_matrix(encoder_a, "encoder_a", shape=a.shape) @ r
    table = match(a @ r, decoder_b, threshold=threshold, encoder_a=mapped_encoder, encoder_b=encoder_b,
                  dense_limit=dense_limit, candidates=candidates)
    table.attrs["level"] = "linear"
    return table
