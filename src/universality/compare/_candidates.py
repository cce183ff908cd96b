"""The top-m candidate partners of every unit against every other model, reduced block by block
from the co-moment blocks of a plan (beside `PairMaxima`'s max), for sketch-and-refine.

For a cross block C [rows of a, columns of b] and the units' 1/std s: rho = C * s_a s_b^T; each row's
m largest correlations are candidates a -> b, each column's m largest b -> a. Candidates of different
blocks and passes merge by keeping the m largest of both (exact and order-free up to ties). Dead
units (NaN 1/std) are never candidates. `pairs()` turns the candidates into the unit pairs whose
co-moments the refine pass accumulates: each unordered pair once, from either direction.
"""

from __future__ import annotations

import itertools

import torch

from ..moments import Block, MomentAccumulator
from ._correlation import _inverse_std

__all__ = ["TopCandidates"]

_TILE = 2048  # side of one correlation tile (16 MB in float32)


class TopCandidates:
    """Running top-`m` correlations and partners of every unit against every other model.

    Parameters
    ----------
    layout : {model: {unit_set: units}}
    m : int >= 1, at most the units of every model

    State per ordered model pair (a, b): `values[a, b]` float64 [units_a, m] (-inf: no candidate yet)
    and `partners[a, b]` int64 [units_a, m] (index into b's concatenated units, -1: none).

    >>> import torch
    >>> from universality.moments import MomentAccumulator
    >>> x = torch.randn(100, 3)
    >>> acc = MomentAccumulator({"a": {"u": 3}, "b": {"u": 3}}).update({"a": {"u": x}, "b": {"u": x[:, [2, 0, 1]]}})
    >>> top = TopCandidates(acc.layout, 1)
    >>> top.add_state(acc, acc)
    >>> top.partners["a", "b"][:, 0].tolist()
    [1, 2, 0]
    """

    def __init__(self, layout: dict, m: int):
        self.layout = {model: dict(sets) for model, sets in layout.items()}
        self.m = m
        self.sizes = {model: sum(sets.values()) for model, sets in self.layout.items()}
        starts = torch.tensor([0] + list(self.sizes.values())).cumsum(0).tolist()
        self.offsets = dict(zip(self.layout, starts))  # global index of each model's first unit
        self.values, self.partners = {}, {}
        for a in self.layout:
            for b in self.layout:
                if a != b:
                    self.values[a, b] = torch.full((self.sizes[a], m), -torch.inf, dtype=torch.float64)
                    self.partners[a, b] = torch.full((self.sizes[a], m), -1, dtype=torch.int64)

    def add_state(self, acc: MomentAccumulator, first: MomentAccumulator) -> None:
        """Reduce every cross block of `acc` (one pass's finished state), scaled by the 1/std read
        off `first` (the state holding every Gram: pass 0 of the plan). `run_plan`'s `on_state`."""
        inverse_std = torch.cat([_inverse_std(first, model) for model in first.models])  # [all units]
        for block, values in acc.blocks_.items():
            if not block.is_gram:
                self.add_block(block, values, inverse_std)

    def add_block(self, block: Block, values: torch.Tensor, inverse_std: torch.Tensor) -> None:
        """Reduce one cross block `values` [rows, columns] (global unit indices `block`), with the
        units' 1/std `inverse_std` float64 [all units] (NaN: dead). Correlations are formed in the
        block's dtype, one square tile of `_TILE` x `_TILE` at a time in reused buffers (square: each
        row's and each column's candidates are merged once per tile, the fewest merges)."""
        scale = inverse_std.to(values.device, values.dtype)
        buffers = [torch.empty(_TILE * _TILE, dtype=values.dtype, device=values.device) for _ in range(2)]
        for a, r0, r1 in self._models_in(block.row_start, block.row_stop):
            for b, c0, c1 in self._models_in(block.column_start, block.column_stop):
                for i0, j0 in itertools.product(range(r0, r1, _TILE), range(c0, c1, _TILE)):
                    i1, j1 = min(i0 + _TILE, r1), min(j0 + _TILE, c1)
                    tile = values[i0 - block.row_start:i1 - block.row_start,
                                  j0 - block.column_start:j1 - block.column_start]
                    corr = buffers[0][:tile.numel()].view(tile.shape)  # [i1 - i0, j1 - j0]
                    torch.mul(tile, scale[i0:i1, None], out=corr).mul_(scale[None, j0:j1])
                    corr.nan_to_num_(nan=-torch.inf)
                    self._merge(a, b, i0 - self.offsets[a], *corr.topk(min(self.m, j1 - j0), dim=1),
                                j0 - self.offsets[b])
                    # the columns' candidates: topk along the rows of a transposed copy (4x faster than dim=0)
                    transposed = buffers[1][:tile.numel()].view(tile.shape[::-1]).copy_(corr.T)
                    self._merge(b, a, j0 - self.offsets[b], *transposed.topk(min(self.m, i1 - i0), dim=1),
                                i0 - self.offsets[a])

    def pairs(self) -> torch.Tensor:
        """Every candidate pair once: int64 [pairs, 2] of global unit indices (row < column), sorted."""
        total = sum(self.sizes.values())
        keys = []
        for (a, b), partners in self.partners.items():
            rows = torch.arange(self.sizes[a])[:, None].expand_as(partners) + self.offsets[a]
            found = self.values[a, b] > -torch.inf
            i, j = rows[found], partners[found] + self.offsets[b]
            keys.append(torch.minimum(i, j) * total + torch.maximum(i, j))
        keys = torch.unique(torch.cat(keys)) if keys else torch.zeros(0, dtype=torch.int64)
        return torch.stack([keys // total, keys % total], dim=1)

    def _merge(self, a: str, b: str, start: int, values: torch.Tensor, index: torch.Tensor, offset: int) -> None:
        """Keep the m largest of the current candidates of a's units [start, start + rows) against b
        and `values` [rows, k] at b's units `index + offset`."""
        rows = slice(start, start + values.shape[0])
        both = torch.cat([self.values[a, b][rows], values.cpu().double()], dim=1)
        partners = torch.cat([self.partners[a, b][rows], index.cpu() + offset], dim=1)
        best, which = both.topk(self.m, dim=1)
        self.values[a, b][rows] = best
        self.partners[a, b][rows] = partners.gather(1, which)

    def _models_in(self, start: int, stop: int) -> list[tuple[str, int, int]]:
        """(model, global start, global stop) of each model's part of the units [start, stop)."""
        parts = []
        for model, offset in self.offsets.items():
            lo, hi = max(start, offset), min(stop, offset + self.sizes[model])
            if lo < hi:
                parts.append((model, lo, hi))
        return parts
