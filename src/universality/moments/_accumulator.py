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
        Accumulator precision. Batch products are float32 GEMMs either way; means are float64, exact to ~eps32 * std / sqrt(batch).
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
        self._scratch = None

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
        centred = self._buffer(tokens + 1)  # [tokens + 1, all units] float32, reused across batches
        batch_mean = {}
        for m in self.models:
            # 1) Centre on the batch mean, so the GEMMs below see small numbers (the one-pass
            #    sum(xy) - sum(x)sum(y)/n form cancels badly): subtract a float32 mean while copying
            #    into the batch matrix, then take the mean of what is left. Their float64 sum is the
            #    batch mean to ~eps32 * std; the co-moment about the float32 mean differs from the one
            #    about the exact mean by tokens * r_a r_b^T, r ~ eps32 * |mean|: below float32 resolution.
            lo, hi = self.offsets[m], self.offsets[m] + self.sizes[m]
            rough, start = [], lo
            for s, n in self.layout[m].items():
                x = models[m][s].to(self.device)
                mean = x.sum(dim=0, dtype=torch.float32) / tokens
                if not torch.isfinite(mean).all():  # any NaN or inf reaches the mean: a free check
                    raise UniversalityError(f"{m}/{s} has NaN or inf activations in batch {self.batches_}")
                torch.sub(x, mean, out=centred[:tokens, start:start + n])  # any dtype -> float32 here
                rough.append(mean)
                start += n
            rest = centred[:tokens, lo:hi].sum(dim=0) / tokens
            batch_mean[m] = torch.cat(rough).double() + rest.double()
        # 2) Chan's correction for the batch mean differing from the state's, (n_a n_b / n) delta delta^T,
        #    rides along as one extra row of the batch matrix, so the GEMMs below add it for free.
        weight = self.count_ * tokens / (self.count_ + tokens)
        for m in self.models:
            delta = batch_mean[m] - self.mean_[m]  # float64 [units_m]
            centred[tokens, self.offsets[m]:self.offsets[m] + self.sizes[m]] = (weight ** 0.5 * delta).float()
        # 3) Add the batch's co-moments straight into the state: one GEMM per model against all
        #    later models side by side, one per unit set for the Grams.
        for m in self.models:
            lo, hi = self.offsets[m], self.offsets[m] + self.sizes[m]
            _add_product(self.cross_[m], centred[:, lo:hi], centred[:, hi:])
            for s, n in self.layout[m].items():
                block = centred[:, lo:lo + n]  # [tokens + 1, units_s]
                _add_product(self.gram_[m][s], block, block)
                lo += n
        self._move_means(tokens, batch_mean)
        self.batches_ += 1
        return self

    def merge(self, other: "MomentAccumulator") -> "MomentAccumulator":
        """A new accumulator holding both streams (Chan's update); neither input changes."""
        if other.layout != self.layout:
            raise UniversalityError("cannot merge moment states of different layouts (models, unit sets or sizes differ)")
        merged = self.copy()
        for m in self.models:
            merged.cross_[m] += other.cross_[m].to(merged.cross_[m].dtype)
            for s, g in other.gram_[m].items():
                merged.gram_[m][s] += g.to(merged.gram_[m][s].dtype)
        merged._correct_comoments(other.count_, other.mean_)
        merged._move_means(other.count_, other.mean_)
        merged.batches_ = self.batches_ + other.batches_
        return merged

    def copy(self) -> "MomentAccumulator":
        twin = MomentAccumulator(self.layout, dtype=self.dtype, device=self.device)
        twin.count_, twin.batches_ = self.count_, self.batches_
        twin.mean_ = {m: v.clone() for m, v in self.mean_.items()}
        twin.gram_ = {m: {s: g.clone() for s, g in sets.items()} for m, sets in self.gram_.items()}
        twin.cross_ = {m: c.clone() for m, c in self.cross_.items()}
        return twin

    def _buffer(self, tokens: int) -> torch.Tensor:
        """A float32 [tokens, all units] scratch matrix, kept between batches: allocating a fresh one
        per batch costs page faults comparable to the GEMMs."""
        if self._scratch is None or self._scratch.shape[0] < tokens:
            self._scratch = torch.empty(tokens, self.total_units, dtype=torch.float32, device=self.device)
        return self._scratch[:tokens]

    def _correct_comoments(self, count_b: int, mean_b: dict) -> None:
        """Chan's parallel update, after B's co-moments were added (C = C_a + C_b): the correction
        C += (n_a n_b / n) delta_a delta_b^T for the shift of means delta = mean_b - mean_a."""
        if not self.count_ or not count_b:
            return
        weight = self.count_ * count_b / (self.count_ + count_b)
        delta = {m: mean_b[m] - self.mean_[m] for m in self.models}  # float64 [units_m]
        for i, m in enumerate(self.models):
            start = 0
            for s, size in self.layout[m].items():
                d = delta[m][start:start + size].to(self.gram_[m][s].dtype)
                self.gram_[m][s].addr_(d, d, alpha=weight)
                start += size
            if self.cross_[m].numel():
                later = torch.cat([delta[b] for b in self.models[i + 1:]])
                dtype = self.cross_[m].dtype
                self.cross_[m].addr_(delta[m].to(dtype), later.to(dtype), alpha=weight)

    def _move_means(self, count_b: int, mean_b: dict) -> None:
        """The last step of Chan's update: the mean moves towards B's by n_b / n."""
        n = self.count_ + count_b
        if count_b:
            for m in self.models:
                self.mean_[m] += (mean_b[m] - self.mean_[m]) * (count_b / n)
        self.count_ = n


def _add_product(target: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """target += left^T right for float32 [tokens, a] and [tokens, b]: the hot GEMM, in place."""
    if right.shape[1] == 0:
        return
    if target.dtype == left.dtype:
        target.addmm_(left.T, right)
    else:
        target.add_(left.T @ right)  # float32 GEMM, float64 accumulation
