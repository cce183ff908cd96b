"""Pearson correlation of every unit pair, read off streamed moments.

`rho_ij = C_ij / sqrt(G_a,ii G_b,jj)` (C: centred cross-moment, G: centred Gram). A unit whose
variance is indistinguishable from zero is *dead*: its correlations are NaN, never 0.
"""

from __future__ import annotations

import torch

from .._defaults import is_dead
from ..moments import MomentAccumulator

__all__ = ["dead_units", "pearson"]

# A unit is dead when its standard deviation is below the float32 rounding of its mean: then its
# "variation" is rounding, not signal. Constant units (e.g. a ReLU that never fires) give exactly 0.


def dead_units(acc: MomentAccumulator, model: str) -> torch.Tensor:
    """Bool [units_m]: zero variance over the stream (as far as float32 can tell)."""
    return is_dead(acc.variance(model) / max(acc.count_, 1), acc.mean_[model])


def pearson(acc: MomentAccumulator, model_a: str, model_b: str, rows: slice | torch.Tensor = slice(None),
            columns: slice | torch.Tensor = slice(None)) -> torch.Tensor:
    """Pearson correlation, float64 [units_a (rows), units_b (columns)]; NaN in rows and columns of dead
    units. `rows`, `columns`: slices (a view of the state until the one float64 copy) or unit indices
    (index tensors: rows are gathered first, float32 [rows, units_b], then the columns).

    >>> import torch
    >>> x = torch.randn(100, 3)
    >>> acc = MomentAccumulator({"a": {"units": 3}, "b": {"units": 3}}).update({"a": x, "b": 2 * x + 1})
    >>> torch.allclose(pearson(acc, "a", "b").diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-5)
    True
    """
    scale_a = _inverse_std(acc, model_a)[rows]  # [rows]
    scale_b = _inverse_std(acc, model_b)[columns]  # [columns]
    corr = acc.cross(model_a, model_b)[rows][:, columns].to(torch.float64, copy=True)  # [rows, columns]
    return corr.mul_(scale_a[:, None]).mul_(scale_b[None, :])  # scaled in place: no temporaries of that size


def _inverse_std(acc: MomentAccumulator, model: str) -> torch.Tensor:
    """1 / sqrt(G_ii) per unit, NaN for dead units, float64 [units_m]."""
    inverse = acc.variance(model).rsqrt()
    inverse[dead_units(acc, model)] = float("nan")
    return inverse
