"""Max correlations and rotation baselines reduced block by block, so no [U_a, U_b] matrix is
ever held beyond one unit-set pair: what makes a memory-budgeted, multi-pass comparison exact.

Two steps:
1) `baseline_scales(acc)` from the means and Grams (the first pass of any plan holds every Gram):
   each unit's 1/std (NaN when dead) and, per unit set and rotation, the rotation Q and the rotated
   units' 1/std, 1/sqrt(diag(Q G Q^T)).
2) `PairMaxima.add_block` for every cross-moment block C [rows of a, columns of b], unit-set pair
   by unit-set pair: rho = C * s_a s_b^T; row max / argmax update a -> b, column max / argmax b -> a;
   rotated: (C Q_b^T) row max for a -> b and (Q_a C) column max for b -> a.
Maxima of different blocks and passes combine by max, which is exact and order-free (ties keep the
lower partner index, as one max over the whole row does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..moments import Block, MomentAccumulator
from ..moments._blocks import unit_set_spans
from ._correlation import _inverse_std
from ._rotations import HaarRotation, rotation

__all__ = ["BaselineScales", "baseline_scales", "PairMaxima"]

# entries of the rotated products held at once per unit-set pair: rotations are reduced in groups of
# this many entries over the pair's (one rotation at a time when the pair alone is larger)
_ROTATED_ENTRIES = 2**22


@dataclass
class BaselineScales:
    """What the block reduction needs beside the cross blocks, all derived from means and Grams.

    inverse_std : {model: float64 [units_m]}, NaN for dead units
    rotated : {(model, unit_set): [(rotation, float64 [units_s] 1/sqrt(diag Q G Q^T)) per rotation]}
    """
    inverse_std: dict
    rotated: dict


def baseline_scales(acc: MomentAccumulator, *, rotations: int, seed: int, kind: str = "auto") -> BaselineScales:
    """Scales of every unit and rotated unit from `acc`'s means and Grams (it must hold every Gram).
    One rotation per (unit set position, rotation index, width) is drawn and shared by all models."""
    inverse_std = {m: _inverse_std(acc, m) for m in acc.models}
    shared, rotated = {}, {}
    for m in acc.models:
        for index, (name, size) in enumerate(acc.layout[m].items()):
            grams = acc.gram_[m][name].double()
            per_rotation = []
            for r in range(rotations):
                key = (index, r, size)
                if key not in shared:
                    shared[key] = rotation(kind, seed, index, r, size)
                variance = shared[key].rotated_variances(grams)  # diag(Q G Q^T), float64 [n]
                per_rotation.append((shared[key], variance.clamp_min(0).rsqrt()))
            rotated[m, name] = per_rotation
    return BaselineScales(inverse_std, rotated)


class PairMaxima:
    """Running max correlation, partner and rotated maxima of every unit against every other model.

    State per ordered model pair (a, b), float64 / int64, -inf / -1 until a block reaches it:
    `max_corr[a, b]` [units_a], `partner[a, b]` [units_a] (index into b's concatenated units),
    `baseline[a, b]` [rotations, units_a]. With `spread=True` also `rotated_moments[a, b]`
    [rotations, 3, units_a]: per unit of a, the count, sum and sum of squares of its correlations with
    the live rotated units of b (what `compare._sketch` needs to take the noise of a short stream out of
    the baseline).
    """

    def __init__(self, layout: dict, rotations: int, *, spread: bool = False):
        self.layout = {m: dict(sets) for m, sets in layout.items()}
        self.rotations = rotations
        self.rotated_moments = {} if spread else None
        self.sizes = {m: sum(sets.values()) for m, sets in self.layout.items()}
        self.max_corr, self.partner, self.baseline = {}, {}, {}
        for a in self.layout:
            for b in self.layout:
                if a != b:
                    self.max_corr[a, b] = torch.full((self.sizes[a],), -torch.inf, dtype=torch.float64)
                    self.partner[a, b] = torch.full((self.sizes[a],), -1, dtype=torch.int64)
                    self.baseline[a, b] = torch.full((rotations, self.sizes[a]), -torch.inf, dtype=torch.float64)
                    if spread:
                        self.rotated_moments[a, b] = torch.zeros(rotations, 3, self.sizes[a], dtype=torch.float64)
        self._spans = unit_set_spans(self.layout)
        self._model_start = {m: min(span[2] for span in self._spans if span[0] == m) for m in self.layout}

    def add_block(self, block: Block, values: torch.Tensor, scales: BaselineScales) -> None:
        """Reduce one cross block `values` [rows, columns] (global unit indices `block`)."""
        for a, set_a, a0, a1 in self._spans_in(block.row_start, block.row_stop):
            for b, set_b, b0, b1 in self._spans_in(block.column_start, block.column_stop):
                sub = values[a0 - block.row_start:a1 - block.row_start, b0 - block.column_start:b1 - block.column_start]
                self._add_sets(a, set_a, a0, b, set_b, b0, sub, scales)

    def _add_sets(self, a, set_a, a0, b, set_b, b0, cross, scales: BaselineScales) -> None:
        """One unit-set pair: cross [n_a, n_b] in the state's dtype; a0 / b0 are global starts."""
        dtype = cross.dtype
        la, lb = a0 - self._model_start[a], b0 - self._model_start[b]  # offsets inside each model
        rows, columns = slice(la, la + cross.shape[0]), slice(lb, lb + cross.shape[1])
        scale_a = scales.inverse_std[a][rows].to(dtype)[:, None]  # [n_a, 1]
        scale_b = scales.inverse_std[b][columns].to(dtype)[None, :]  # [1, n_b]
        corr = torch.nan_to_num(cross * scale_a * scale_b, nan=-torch.inf)  # [n_a, n_b]
        _keep_max(self.max_corr[a, b], self.partner[a, b], rows, *corr.max(dim=1), lb)
        _keep_max(self.max_corr[b, a], self.partner[b, a], columns, *corr.max(dim=0), la)
        del corr
        rotated_b, rotated_a = scales.rotated[b, set_b], scales.rotated[a, set_a]
        step = max(1, _ROTATED_ENTRIES // cross.numel())  # rotations reduced together: one GEMM each way
        for r0 in range(0, self.rotations, step):
            chunk = slice(r0, min(r0 + step, self.rotations))
            inverse_b = torch.stack([s for _, s in rotated_b[chunk]]).to(dtype)  # [c, n_b]
            inverse_a = torch.stack([s for _, s in rotated_a[chunk]]).to(dtype)  # [c, n_a]
            forward = _rotate_columns([q for q, _ in rotated_b[chunk]], cross)  # C Q_b^T: [n_a, c, n_b]
            forward.mul_(scale_a[:, :, None]).mul_(inverse_b[None])
            peak = forward.nan_to_num_(nan=-torch.inf).amax(dim=2).T.double().cpu()  # [c, n_a]
            torch.maximum(self.baseline[a, b][chunk, rows], peak, out=self.baseline[a, b][chunk, rows])
            if self.rotated_moments is not None:
                self.rotated_moments[a, b][chunk, :, rows] += _moments_along(forward, dim=2).permute(2, 0, 1)
            del forward
            backward = _rotate_rows([q for q, _ in rotated_a[chunk]], cross)  # Q_a C: [c, n_a, n_b]
            backward.mul_(inverse_a[:, :, None]).mul_(scale_b)
            peak = backward.nan_to_num_(nan=-torch.inf).amax(dim=1).double().cpu()  # [c, n_b]
            torch.maximum(self.baseline[b, a][chunk, columns], peak, out=self.baseline[b, a][chunk, columns])
            if self.rotated_moments is not None:
                self.rotated_moments[b, a][chunk, :, columns] += _moments_along(backward, dim=1).permute(1, 0, 2)
            del backward

    def update(self, other: "PairMaxima") -> "PairMaxima":
        """Fold `other` (maxima of other blocks of the same layout) into self; returns self."""
        for key in self.max_corr:
            _keep_max(self.max_corr[key], self.partner[key], slice(None), other.max_corr[key], other.partner[key], 0)
            torch.maximum(self.baseline[key], other.baseline[key], out=self.baseline[key])
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {}
        for (a, b), value in self.max_corr.items():
            state |= {f"max_corr/{a}/{b}": value, f"partner/{a}/{b}": self.partner[a, b],
                      f"baseline/{a}/{b}": self.baseline[a, b]}
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "PairMaxima":
        for a, b in self.max_corr:
            self.max_corr[a, b].copy_(state[f"max_corr/{a}/{b}"])
            self.partner[a, b].copy_(state[f"partner/{a}/{b}"])
            self.baseline[a, b].copy_(state[f"baseline/{a}/{b}"])
        return self

    def finished(self, a: str, b: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """max_corr [units_a] (NaN: no live partner), partner [units_a] (-1: none), baseline
        [rotations, units_a] (NaN: none) of a against b, as numpy."""
        max_corr = self.max_corr[a, b].numpy().copy()
        none = np.isneginf(max_corr)
        max_corr[none] = np.nan
        partner = self.partner[a, b].numpy().copy()
        partner[none] = -1
        baseline = self.baseline[a, b].numpy().copy()
        baseline[np.isinf(baseline)] = np.nan
        return max_corr, partner, baseline

    def _spans_in(self, start: int, stop: int) -> list[tuple[str, str, int, int]]:
        """(model, unit set, global start, global stop) of each unit set inside [start, stop)."""
        inside = [span for span in self._spans if start <= span[2] and span[3] <= stop]
        if sum(span[3] - span[2] for span in inside) != stop - start:
            raise ValueError(f"block [{start}, {stop}) is not cut at unit-set boundaries")
        return inside


def _rotate_columns(rotations: list, cross: torch.Tensor) -> torch.Tensor:
    """cross [n_a, n_b] times each Q^T: [n_a, len(rotations), n_b]; dense (Haar) rotations stacked into
    one GEMM (32 rotations of 256-wide sets ran 12x slower one GEMM each)."""
    if all(isinstance(q, HaarRotation) for q in rotations):
        stacked = torch.cat([q.dense().to(cross.device, cross.dtype) for q in rotations])  # [c n_b, n_b]
        return (cross @ stacked.T).view(cross.shape[0], len(rotations), cross.shape[1])
    return torch.stack([q.rotate_columns(cross) for q in rotations], dim=1)


def _rotate_rows(rotations: list, cross: torch.Tensor) -> torch.Tensor:
    """Each Q times cross [n_a, n_b]: [len(rotations), n_a, n_b] (dense rotations in one GEMM)."""
    if all(isinstance(q, HaarRotation) for q in rotations):
        stacked = torch.cat([q.dense().to(cross.device, cross.dtype) for q in rotations])  # [c n_a, n_a]
        return (stacked @ cross).view(len(rotations), *cross.shape)
    return torch.stack([q.rotate_rows(cross) for q in rotations])


def _moments_along(corr: torch.Tensor, dim: int) -> torch.Tensor:
    """Count, sum and sum of squares of the finite entries of `corr` along `dim`: float64 [3, other dims]
    (a dead unit's correlations are -inf by then). Overwrites `corr` (its non-finite entries with 0,
    then every entry with its square): in place and
    summed in its own dtype, it costs a third of the float64 temporaries it replaced (a float32 sum of
    a few thousand correlations is within 1e-6 relative, far below what the spread is used for)."""
    count = torch.isfinite(corr).sum(dim)
    total = corr.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0).sum(dim)
    squares = corr.square_().sum(dim)
    return torch.stack([count.double(), total.double(), squares.double()]).cpu()


def _keep_max(best: torch.Tensor, partner: torch.Tensor, where: slice, values: torch.Tensor,
              indices: torch.Tensor, offset: int) -> None:
    """best[where] = max(best[where], values), partner[where] = indices + offset where values win
    (strictly greater, or equal with a lower index: the first max of the whole row wins)."""
    values = values.double().cpu()  # the maxima live on the host; blocks may be on a GPU
    indices = indices.to(torch.int64).cpu() + offset
    current, current_partner = best[where], partner[where]
    wins = (values > current) | ((values == current) & (indices < current_partner) & (current_partner >= 0)
                                 & ~torch.isneginf(values))
    current[wins] = values[wins]
    current_partner[wins] = indices[wins]
