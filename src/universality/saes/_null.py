"""What matching scores at chance: a random dictionary of unit-norm Gaussian directions, and the
analytic expected MCS of one direction against `latents` random ones.

For a fixed unit vector u in R^d and v uniform on the sphere, t = cos(u, v) has density proportional
to (1 - t^2)^((d - 3) / 2) on [-1, 1], i.e. (t + 1) / 2 ~ Beta((d - 1) / 2, (d - 1) / 2), CDF F.
The MCS against L independent such v is the max M of L draws, CDF F^L, so
E[M] = -1 + integral over [-1, 1] of (1 - F(t)^L) dt. The distribution does not depend on u, so the
expected MCS of any dictionary against a random one is this number, whatever the dictionary.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from scipy import integrate, stats

from ..errors import UniversalityError, short_repr

__all__ = ["random_decoder", "random_mcs_expectation"]

_TAIL = 1e-16  # M's quantiles at this and 1 - this bound the integral; outside, 1 - F^L is 1 or 0 to this


def random_decoder(latents: int, d_in: int, *, seed: int = 0) -> torch.Tensor:
    """float32 [latents, d_in]: rows of iid Gaussians, normalised (uniform directions), from `seed`.

    >>> random_decoder(3, 4, seed=1).norm(dim=1).allclose(torch.ones(3))
    True
    """
    _check_count(latents, "latents", 1)
    _check_count(d_in, "d_in", 1)
    z = torch.randn(latents, d_in, generator=torch.Generator().manual_seed(seed))  # [latents, d_in]
    return z / z.norm(dim=1, keepdim=True)


def random_mcs_expectation(d_in: int, latents: int) -> float:
    """E[max over `latents` random unit vectors in R^d_in of their cosine with a fixed unit vector]
    (module docstring), by numerical integration of 1 - F^L between M's extreme quantiles.

    >>> round(random_mcs_expectation(3, 1), 6), round(random_mcs_expectation(3, 2), 6)  # cos uniform on [-1, 1]
    (0.0, 0.333333)
    """
    _check_count(d_in, "d_in", 2)
    _check_count(latents, "latents", 1)
    shape = (d_in - 1) / 2
    cosine = stats.beta(shape, shape, loc=-1, scale=2)  # t = 2 u - 1, u ~ Beta

    def tail(t: float) -> float:  # P(M > t) = 1 - F(t)^L, accurate while F^L is near 1
        return -math.expm1(latents * cosine.logcdf(t))

    def quantile(q: float) -> float:  # M's: F(t)^L = q, i.e. F(t) = q^(1/L), read off the upper tail for precision
        return float(cosine.isf(-math.expm1(math.log(q) / latents)))
    low, high = quantile(_TAIL), quantile(1 - _TAIL)
    inner = [quantile(q) for q in (0.01, 0.5, 0.99)]
    area, _ = integrate.quad(tail, low, high, points=inner, limit=200, epsabs=1e-12, epsrel=1e-10)
    return float(low + area)


def _check_count(value, name: str, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)) or value < least:
        raise UniversalityError(f"{name} must be an integer >= {least}, got {short_repr(value)}")
