"""Max correlations and rotation baselines reduced block by block, so no [U_a, U_b] matrix is
ever held beyond one unit-set pair: what makes a memory-budgeted, multi-pass comparison exact.

Two steps:
1) `baseline_scales(acc)` from the means and Grams (the first pass of any plan holds every Gram):
   each unit's 1/std (NaN when dead) and, per unit set, its R rotations Q_r (a `RotationSet`) and the
   rotated units' 1/std, 1/sqrt(diag(Q_r G Q_r^T)).
2) `PairMaxima.add_block` for every cross-moment block C [rows of a, columns of b]: unit-set pair
   by unit-set pair rho = C * s_a s_b^T, row max / argmax update a -> b, column max / argmax b -> a;
   rotated, per unit set and all the block's partners at once: (C Q_b^T) row max for a -> b and
   (Q_a C) column max for b -> a.
Maxima of different blocks and passes combine by max, which is exact and order-free (ties keep the
lower partner index, as one max over the whole row does).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from .._threads import map_single_threaded
from ..moments import Block, MomentAccumulator
from ..moments._blocks import unit_set_spans
from ._correlation import _inverse_std
from ._rotations import RotationSet

__all__ = ["BaselineScales", "baseline_scales", "PairMaxima"]

# entries of one rotated product held at once per worker (16 MB in float32): rotations are applied in chunks
# of at most this many entries over a block's rows (a -> b) or columns (b -> a), at least one rotation per
# chunk. Products above glibc's largest mmap threshold (32 MB) are fresh pages every time: at 2**24 their page
# faults cost 30 ms of each 115 ms GEMM; calibrating 4 models x 8 sets of 256 units took 8.5 CPU-s at 2**24,
# 7.2 at 2**22 and 7.5 at 2**20 (more, smaller products)
_ROTATED_ENTRIES = 2**22


@dataclass
class BaselineScales:
    """What the block reduction needs beside the cross blocks, all derived from means and Grams.

    inverse_std : {model: float64 [units_m]}, NaN for dead units
    rotated : {(model, unit_set): (RotationSet, float64 [rotations, units_s] 1/sqrt(diag Q_r G Q_r^T))}
    """
    inverse_std: dict
    rotated: dict


def baseline_scales(acc: MomentAccumulator, *, rotations: int, seed: int, kind: str = "auto") -> BaselineScales:
    """Scales of every unit and of rotated units r = 0 .. rotations - 1 from `acc`'s means and Grams
    (it must hold every Gram). One `RotationSet` per (unit set position, width), shared by all models."""
    inverse_std = {m: _inverse_std(acc, m) for m in acc.models}
    workers = torch.get_num_threads()  # the draws (QRs) and the rotated variances run on single-threaded workers
    sets = [(m, name, index, size) for m in acc.models for index, (name, size) in enumerate(acc.layout[m].items())]
    keys = list(dict.fromkeys((index, size) for _, _, index, size in sets))

    def draw(key: tuple[int, int]) -> RotationSet:
        return RotationSet(kind, seed, *key, range(rotations))

    shared = dict(zip(keys, map_single_threaded(draw, keys, workers)))

    def inverse_rotated_std(item: tuple) -> torch.Tensor:
        m, name, index, size = item
        return shared[index, size].rotated_variances(acc.gram_[m][name].double()).clamp_min(0).rsqrt()  # [R, n]

    inverses = map_single_threaded(inverse_rotated_std, sets, workers)
    rotated = {(m, name): (shared[index, size], inverse) for (m, name, index, size), inverse in zip(sets, inverses)}
    return BaselineScales(inverse_std, rotated)


class PairMaxima:
    """Running max correlation, partner and rotated maxima of every unit against every other model.

    State per ordered model pair (a, b), float64 / int64, -inf / -1 until a block reaches it:
    `max_corr[a, b]` [units_a], `partner[a, b]` [units_a] (index into b's concatenated units),
    `baseline[a, b]` [rotations, units_a] ([2 rotations, units_a] with `antithetic`: rows R .. 2R - 1 hold
    the maxima against -Q_r, i.e. minus the minima against Q_r, read from the same products). With
    `spread=True` also `rotated_moments[a, b]`
    [rotations, 3, units_a]: per unit of a, the count, sum and sum of squares of its correlations with
    the live rotated units of b (what `compare._sketch` needs to take the noise of a short stream out of
    the baseline). With `correlations=False` only the baselines are reduced (`max_corr` stays -inf):
    what calibration adds to a comparison.
    """

    def __init__(self, layout: dict, rotations: int, *, spread: bool = False, correlations: bool = True,
                 antithetic: bool = False):
        if antithetic and (spread or correlations):
            raise ValueError("antithetic maxima are for the baselines alone (correlations=False, spread=False)")
        self.layout = {m: dict(sets) for m, sets in layout.items()}
        self.rotations, self.correlations, self.antithetic = rotations, correlations, antithetic
        self.rotated_moments = {} if spread else None
        self.sizes = {m: sum(sets.values()) for m, sets in self.layout.items()}
        self.max_corr, self.partner, self.baseline = {}, {}, {}
        for a in self.layout:
            for b in self.layout:
                if a != b:
                    self.max_corr[a, b] = torch.full((self.sizes[a],), -torch.inf, dtype=torch.float64)
                    self.partner[a, b] = torch.full((self.sizes[a],), -1, dtype=torch.int64)
                    rows = 2 * rotations if antithetic else rotations
                    self.baseline[a, b] = torch.full((rows, self.sizes[a]), -torch.inf, dtype=torch.float64)
                    if spread:
                        self.rotated_moments[a, b] = torch.zeros(rotations, 3, self.sizes[a], dtype=torch.float64)
        self._spans = unit_set_spans(self.layout)
        self._model_start = {m: min(span[2] for span in self._spans if span[0] == m) for m in self.layout}

    def add_block(self, block: Block, values: torch.Tensor, scales: BaselineScales) -> None:
        """Reduce one cross block `values` [rows, columns] (global unit indices `block`).

        1) Max correlation and partner, unit-set pair by unit-set pair (unless `correlations=False`).
        2) a -> rotated b: per unit set of b in the columns, every row against R rotations of it, one GEMM per
           chunk of rotations with the rotated units' 1/std folded into Q (`RotationSet`); the rows' 1/std then
           multiply the row maxima (a positive scale does not move a max).
        3) b -> rotated a: the same per unit set of a in the rows, against every column.
        The unit sets of 2) and 3) run on single-threaded workers (`map_single_threaded`); their maxima are
        folded in here, in order.
        """
        row_spans = self._block_spans(block.row_start, block.row_stop)
        column_spans = self._block_spans(block.column_start, block.column_stop)
        if self.correlations:
            for (a, _, rows, local_a), (b, _, columns, local_b) in itertools.product(row_spans, column_spans):
                self._add_max(a, local_a, b, local_b, values[rows, columns], scales)
        finite = _finite(values)
        row_scale = torch.cat([scales.inverse_std[a][local] for a, _, _, local in row_spans]).to(values)  # [rows]
        column_scale = torch.cat([scales.inverse_std[b][local] for b, _, _, local in column_spans]).to(values)
        jobs = ([(b, set_b, columns, True, row_scale) for b, set_b, columns, _ in column_spans]  # 2)
                + [(a, set_a, rows, False, column_scale) for a, set_a, rows, _ in row_spans])  # 3)
        reduced = map_single_threaded(lambda job: self._rotated_maxima(values, *job, scales, finite), jobs,
                                      torch.get_num_threads())
        for (rotated, _, _, along_columns, _), chunks in zip(jobs, reduced):
            fixed_spans = row_spans if along_columns else column_spans
            for chunk, peak, moments in chunks:
                for fixed, _, units, local in fixed_spans:
                    for rows, part in self._baseline_rows(chunk, peak):
                        target = self.baseline[fixed, rotated][rows, local]
                        torch.maximum(target, part[:, units], out=target)
                    if moments is not None:
                        self.rotated_moments[fixed, rotated][chunk, :, local] += moments[:, :, units]

    def _rotated_maxima(self, values: torch.Tensor, model: str, name: str, span: slice, along_columns: bool,
                        fixed_scale: torch.Tensor, scales: BaselineScales, finite: bool) -> list[tuple]:
        """The R rotations of one unit set of the block (its units `span` of the columns when `along_columns`,
        else of the rows) against every unit on the other side, whose 1/std is `fixed_scale` [units]:
        [(chunk of rotations, max float64 [c, units], `_moments_along` [c, 3, units] or None)]."""
        rotations, inverse = scales.rotated[model, name]
        cross = values[:, span] if along_columns else values[span]  # [rows, n] or [n, columns]
        spread, out = self.rotated_moments is not None, []
        for chunk in self._chunks(cross.numel()):
            finite_chunk = finite and _finite(inverse[chunk])
            if along_columns:
                product = rotations.rotate_columns(cross, inverse, chunk)  # [rows, c, n]
                peak, moments = _reduce_rotated(product, 2, fixed_scale[:, None, None], finite_chunk, spread,
                                                self.antithetic)
                out.append((chunk, peak.T, None if moments is None else moments.permute(2, 0, 1)))
            else:
                product = rotations.rotate_rows(cross, inverse, chunk)  # [c, n, columns]
                peak, moments = _reduce_rotated(product, 1, fixed_scale[None, None, :], finite_chunk, spread,
                                                self.antithetic)
                out.append((chunk, peak, None if moments is None else moments.permute(1, 0, 2)))
            del product
        return out

    def _add_max(self, a: str, rows: slice, b: str, columns: slice, cross: torch.Tensor, scales: BaselineScales
                 ) -> None:
        """Max correlation and partner of one unit-set pair: cross [n_a, n_b]; rows / columns index inside a / b."""
        scale_a = scales.inverse_std[a][rows].to(cross)[:, None]  # [n_a, 1]
        scale_b = scales.inverse_std[b][columns].to(cross)[None, :]  # [1, n_b]
        corr = torch.nan_to_num(cross * scale_a * scale_b, nan=-torch.inf)  # [n_a, n_b]
        _keep_max(self.max_corr[a, b], self.partner[a, b], rows, *corr.max(dim=1), columns.start)
        _keep_max(self.max_corr[b, a], self.partner[b, a], columns, *corr.max(dim=0), rows.start)

    def _baseline_rows(self, chunk: slice, peak: torch.Tensor) -> list[tuple[slice, torch.Tensor]]:
        """Where the maxima `peak` [c or 2c, units] of rotations `chunk` go in a baseline: rows `chunk`, and
        with `antithetic` the second half, against -Q_r, rows `chunk` + R."""
        if not self.antithetic:
            return [(chunk, peak)]
        c, shift = chunk.stop - chunk.start, self.rotations
        return [(chunk, peak[:c]), (slice(chunk.start + shift, chunk.stop + shift), peak[c:])]

    def _chunks(self, entries: int) -> list[slice]:
        """Rotation ranges whose products of `entries` entries each fit in `_ROTATED_ENTRIES` together."""
        step = max(1, _ROTATED_ENTRIES // entries)
        return [slice(r0, min(r0 + step, self.rotations)) for r0 in range(0, self.rotations, step)]

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

    def _block_spans(self, start: int, stop: int) -> list[tuple[str, str, slice, slice]]:
        """(model, unit set, its units in the block [start, stop), its units inside the model) of each unit set
        inside [start, stop) of the global order."""
        inside = [span for span in self._spans if start <= span[2] and span[3] <= stop]
        if sum(span[3] - span[2] for span in inside) != stop - start:
            raise ValueError(f"block [{start}, {stop}) is not cut at unit-set boundaries")
        return [(m, name, slice(s0 - start, s1 - start), slice(s0 - self._model_start[m], s1 - self._model_start[m]))
                for m, name, s0, s1 in inside]


def _finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def _reduce_rotated(product: torch.Tensor, dim: int, fixed_scale: torch.Tensor, finite: bool, spread: bool,
                    antithetic: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotated correlations reduced over the rotated units, dimension `dim` of `product` (rotated units
    already scaled), once the fixed side's 1/std `fixed_scale` (broadcast to `product`, NaN: dead) applies:
    (max over `dim` float64 on the host, -inf where none is finite; and with `spread`, `_moments_along`).
    `finite`: every input was finite, so `product` is: then the fixed scale multiplies the maxima only.
    `antithetic`: the maxima, then minus the minima (the maxima against -Q), stacked along the rotations
    (dimension 1 of the result when `dim` is 2, else 0); one pass over `product` when it is finite."""
    if antithetic:
        if finite:  # two reductions: torch.aminmax ran 8-9x slower than amax + amin here (single pass, unvectorised)
            low, high = product.amin(dim=dim), product.amax(dim=dim)
        else:
            low = torch.nan_to_num(product, nan=torch.inf).amin(dim=dim)
            high = torch.nan_to_num(product, nan=-torch.inf).amax(dim=dim)
        peak = torch.cat([high, low.neg_()], dim=1 if dim == 2 else 0)
        peak = peak * fixed_scale.squeeze(dim)
        return torch.nan_to_num(peak, nan=-torch.inf).double().cpu(), None
    if not finite:
        torch.nan_to_num(product, nan=-torch.inf, out=product)
    moments = None
    if spread:  # the moments need every correlation itself
        product.mul_(fixed_scale)
        peak = product.amax(dim=dim)
        moments = _moments_along(product, dim)  # overwrites product
    else:
        peak = product.amax(dim=dim) * fixed_scale.squeeze(dim)
    return torch.nan_to_num(peak, nan=-torch.inf).double().cpu(), moments


def _moments_along(corr: torch.Tensor, dim: int) -> torch.Tensor:
    """Count, sum and sum of squares of the finite entries of `corr` along `dim`: float64 [3, other dims].
    Overwrites `corr` (its non-finite entries with 0, then every entry with its square): in place and
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
