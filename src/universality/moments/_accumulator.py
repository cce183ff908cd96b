"""Streaming first and second moments of K models' unit activations (DESIGN.md, "one pass").

State, for models m in stream order with units concatenated in unit-set order:

| name         | shape                          | meaning                                              |
|--------------|--------------------------------|------------------------------------------------------|
| `count_`     | int                            | tokens seen                                          |
| `mean_[m]`   | float64 [units_m]              | mean activation                                      |
| `gram_[m][s]`| [units_s, units_s]             | centred Gram of unit set s: sum (x - mean)(x - mean)^T |
| `cross_[m]`  | [units_m, units of later models] | centred cross-moments with every later model, side by side |

`cross_[a]` holds `C_ab = sum (x_a - mean_a)(x_b - mean_b)^T` for every b after a as column
blocks, so each batch costs one GEMM per model (the largest, fastest shape) instead of one per pair.
Batches merge by Chan's parallel update, which is exact and associative: shards merge into the
same state as one stream.
"""

from __future__ import annotations

import torch

from ..errors import UniversalityError
from ._batches import Layout, layout_of, normalize_batch

__all__ = ["MomentAccumulator"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class MomentAccumulator:
    """Accumulates means, per-unit-set Grams and cross-model co-moments over a token stream.

    Parameters
    ----------
    layout : {model: {unit_set: units}}
        The structure of every batch; models and unit sets in order.
    dtype : {'float32', 'float64'}, default='float32'
        Accumulator precision. Batch products are float32 GEMMs either way; means are float64.
    device : str, default='cpu'

    >>> import torch
    >>> acc = MomentAccumulator({"a": {"units": 3}, "b": {"units": 2}})
    >>> acc = acc.update({"a": torch.randn(10, 3), "b": torch.randn(10, 2)})
    >>> acc.count_, acc.cross_["a"].shape
    (10, torch.Size([3, 2]))
    """

    def __init__(self, layout: Layout, *, dtype: str = "float32", device: str = "cpu"):
        if dtype not in _DTYPES:
            raise UniversalityError(f"unknown accumulator dtype {dtype!r}; choose one of: {', '.join(_DTYPES)}")
        self.layout = {m: dict(sets) for m, sets in layout.items()}
        self.dtype = dtype
        self.device = device
        acc = dict(dtype=_DTYPES[dtype], device=device)
        self.models = list(self.layout)
        self.sizes = {m: sum(sets.values()) for m, sets in self.layout.items()}
        # Column offset of each model inside one batch's centred matrix [tokens, all units].
        self.offsets, total = {}, 0
        for m in self.models:
            self.offsets[m] = total
            total += self.sizes[m]
        self.total_units = total
        self.count_ = 0
        self.batches_ = 0
        self.mean_ = {m: torch.zeros(self.sizes[m], dtype=torch.float64, device=device) for m in self.models}
        self.gram_ = {m: {s: torch.zeros(n, n, **acc) for s, n in sets.items()} for m, sets in self.layout.items()}
        self.cross_ = {m: torch.zeros(self.sizes[m], total - self.offsets[m] - self.sizes[m], **acc)
                       for m in self.models}

    @classmethod
    def for_batch(cls, batch, **kwargs) -> "MomentAccumulator":
        """An empty accumulator shaped like `batch`."""
        return cls(layout_of(normalize_batch(batch)), **kwargs)

    def cross(self, model_a: str, model_b: str) -> torch.Tensor:
        """C_ab = sum (x_a - mean_a)(x_b - mean_b)^T, [units_a, units_b] (either order)."""
        ia, ib = self.models.index(model_a), self.models.index(model_b)
        if ia == ib:
            raise UniversalityError(f"cross-moment of {model_a!r} with itself is not stored; use gram_")
        if ia > ib:
            return self.cross(model_b, model_a).T
        start = self.offsets[model_b] - self.offsets[model_a] - self.sizes[model_a]
        return self.cross_[model_a][:, start:start + self.sizes[model_b]]

    def variance(self, model: str) -> torch.Tensor:
        """Sum of squared deviations per unit, float64 [units_m] (the Grams' diagonals)."""
        return torch.cat([g.diagonal().double() for g in self.gram_[model].values()])

    def update(self, batch) -> "MomentAccumulator":
        """Add one batch `{model: {unit_set: Tensor[tokens, units]}}` in place; returns self."""
        models = normalize_batch(batch, self.layout)
        tokens = next(iter(next(iter(models.values())).values())).shape[0]
        if tokens == 0:
            return self
        # 1) Centre the batch on its own mean, into one [tokens, all units] float32 matrix, so the
        #    GEMMs below see small numbers (the one-pass sum(xy) - sum(x)sum(y)/n form cancels badly).
        centred = torch.empty(tokens, self.total_units, dtype=torch.float32, device=self.device)
        batch_mean = {}
        for m in self.models:
            x = torch.cat([models[m][s].to(self.device, torch.float32) for s in self.layout[m]], dim=1)
            # The mean is summed in float64: its error would enter the rank-one correction below.
            mean = x.sum(dim=0, dtype=torch.float64) / tokens
            if not torch.isfinite(mean).all():  # any NaN or inf reaches the mean: a free check
                bad = [s for s in self.layout[m] if not torch.isfinite(models[m][s]).all()]
                raise UniversalityError(
                    f"{m}/{bad[0] if bad else '?'} has NaN or inf activations in batch {self.batches_}"
                )
            # Centring on the float32-rounded mean leaves an offset e ~ 1e-7 |mean| per unit, whose
            # effect tokens * e_a e_b on the co-moment is below float32 resolution.
            centred[:, self.offsets[m]:self.offsets[m] + self.sizes[m]] = x - mean.float()
            batch_mean[m] = mean
        # 2) Co-moments of the batch about its mean: one GEMM per model against all later models.
        batch_cross, batch_gram = {}, {}
        for m in self.models:
            lo, hi = self.offsets[m], self.offsets[m] + self.sizes[m]
            left = centred[:, lo:hi]  # [tokens, units_m]
            batch_cross[m] = (left, centred[:, hi:])  # product formed in _absorb, straight into state
            batch_gram[m] = {}
            start = lo
            for s, n in self.layout[m].items():
                block = centred[:, start:start + n]  # [tokens, units_s]
                batch_gram[m][s] = (block, block)
                start += n
        self._absorb(tokens, batch_mean, batch_gram, batch_cross)
        self.batches_ += 1
        return self

    def merge(self, other: "MomentAccumulator") -> "MomentAccumulator":
        """A new accumulator holding both streams (Chan's update); neither input changes."""
        if other.layout != self.layout:
            raise UniversalityError("cannot merge moment states of different layouts (models, unit sets or sizes differ)")
        merged = self.copy()
        merged._absorb(other.count_, other.mean_, other.gram_, other.cross_)
        merged.batches_ = self.batches_ + other.batches_
        return merged

    def copy(self) -> "MomentAccumulator":
        twin = MomentAccumulator(self.layout, dtype=self.dtype, device=self.device)
        twin.count_, twin.batches_ = self.count_, self.batches_
        twin.mean_ = {m: v.clone() for m, v in self.mean_.items()}
        twin.gram_ = {m: {s: g.clone() for s, g in sets.items()} for m, sets in self.gram_.items()}
        twin.cross_ = {m: c.clone() for m, c in self.cross_.items()}
        return twin

    def _absorb(self, count_b: int, mean_b: dict, gram_b: dict, cross_b: dict) -> None:
        """Chan's parallel update with a second state B; its co-moments are matrices or
        (left, right) factor pairs whose product `left^T right` is added without a temporary."""
        if count_b == 0:
            return
        n_a, n = self.count_, self.count_ + count_b
        # 1) Shift of means and the weight of its rank-one correction, n_a n_b / n.
        delta = {m: mean_b[m] - self.mean_[m] for m in self.models}  # float64 [units_m]
        weight = n_a * count_b / n
        later = {m: torch.cat([delta[b] for b in self.models[i + 1:]] or [delta[m][:0]])
                 for i, m in enumerate(self.models)}
        for m in self.models:
            # 2) Add B's co-moments: C = C_a + C_b ...
            _add(self.cross_[m], cross_b[m])
            start = 0
            for s, size in self.layout[m].items():
                _add(self.gram_[m][s], gram_b[m][s])
                # 3) ... + (n_a n_b / n) delta_a delta_b^T, the correction for the different means.
                if weight:
                    d = delta[m][start:start + size].to(self.gram_[m][s].dtype)
                    self.gram_[m][s].addr_(d, d, alpha=weight)
                start += size
            if weight and self.cross_[m].numel():
                dtype = self.cross_[m].dtype
                self.cross_[m].addr_(delta[m].to(dtype), later[m].to(dtype), alpha=weight)
            # 4) Mean moves towards B's by n_b / n.
            self.mean_[m] += delta[m] * (count_b / n)
        self.count_ = n


def _add(target: torch.Tensor, comoment) -> None:
    """target += comoment, where comoment is a matrix or (left, right) with product left^T right."""
    if isinstance(comoment, tuple):
        left, right = comoment
        if right.shape[1] == 0:
            return
        if target.dtype == left.dtype:
            target.addmm_(left.T, right)  # [units, tokens] @ [tokens, units']: the hot GEMM
        else:
            target.add_(left.T @ right)  # float32 GEMM, float64 accumulation
    else:
        target.add_(comoment.to(target.dtype))
