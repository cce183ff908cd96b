"""The random-rotation baseline of Gurnee et al. 2024, exact from streamed moments.

Rotating model b's units inside each unit set by an orthogonal Q turns its activations x_b into
Q x_b. Its centred moments follow without touching the data again:

    C_ab -> C_ab Q^T            [units_a, units_s]
    G_b  -> Q G_b Q^T           (only the diagonal is needed: the rotated units' variances)

so any number of seeded Haar rotations cost no pass over the data. (The reference code uses a
row-normalised Gaussian matrix, which is not a rotation, unseeded, in a second pass.)
"""

from __future__ import annotations

import torch

__all__ = ["haar_rotation"]


def haar_rotation(size: int, seed: int) -> torch.Tensor:
    """A Haar-random orthogonal matrix, float64 [size, size], determined by `seed`.

    1) Q, R = QR(Z) for a standard Gaussian Z;
    2) scale Q's columns by sign(diag R), which makes the distribution exactly Haar (Mezzadri 2007)
       and the result independent of the LAPACK's sign convention.

    >>> q = haar_rotation(4, seed=0)
    >>> torch.allclose(q @ q.T, torch.eye(4, dtype=torch.float64))
    True
    """
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(size, size, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    signs = torch.sign(r.diagonal())
    signs[signs == 0] = 1.0
    return q * signs[None, :]
