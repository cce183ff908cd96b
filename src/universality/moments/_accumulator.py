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

from .._inputs import check_device
from ..errors import UniversalityError
from ._batches import Layout, layout_of, normalize_batch

__all__ = ["MomentAccumulator"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Range of |x - mean| whose squares a state can sum: a float32 Gram overflows at 2^128 and its squares
# lose digits below 2^-126 (subnormal); float64 ones at 2^1024 and 2^-1022. Margins keep products exact.
_FLOAT32_SQUARE_MAX = 2.0**62  # divided by sqrt(tokens in the state)
_PRODUCT_TILE = 2**24  # entries of one batch product held at a time (64 MB in float32)
_FLOAT32_DEVIATION_MIN = 2.0**-60
_FLOAT64_SQUARE_MAX = 2.0**500


class MomentAccumulator:
    """Accumulates means, per-unit-set Grams and cross-model co-moments over a token stream.

    Parameters
    ----------
    layout : {model: {unit_set: units}}
        The structure of every batch; models and unit sets in order.
    dtype : {'float32', 'float64'}, default='float32'
        Accumulator precision. Batch products are float32 GEMMs either way; means are float64, exact to
        ~eps32 * std / sqrt(batch). A float32 state holds activations whose deviations from the batch mean
        lie in [2^-60, 2^62 / sqrt(tokens)] (about 9e-19 to 5e18 / sqrt(tokens)) and refuses others in one
        line; a float64 state takes any finite scale, scaling such batches by powers of two (exact).
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
        if device != "meta":  # "meta": shapes only, no memory (checking a saved state without loading it)
            check_device(device)
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
        if self.device == "meta":
            raise UniversalityError("this accumulator is on the 'meta' device (shapes only); create it on 'cpu' "
                                    "or a GPU to stream batches")
        models = normalize_batch(batch, self.layout)
        tokens = next(iter(next(iter(models.values())).values())).shape[0]
        if tokens == 0:
            return self
        centred = self._buffer(tokens + 1)  # [tokens + 1, all units] float32, reused across batches
        batch_mean, outside = self._centre(models, tokens, centred)
        unscale = None
        if outside is not None:  # some unit's deviations are too large or too small for float32 squares
            batch_mean, unscale = self._centre_scaled(models, tokens, centred, outside)
        # 3) Add the batch's co-moments straight into the state: one GEMM per model against all
        #    later models side by side, one per unit set for the Grams.
        for m in self.models:
            lo, hi = self.offsets[m], self.offsets[m] + self.sizes[m]
            _add_product(self.cross_[m], centred[:, lo:hi], centred[:, hi:], unscale, (lo, hi), (hi, None))
            for s, n in self.layout[m].items():
                block = centred[:, lo:lo + n]  # [tokens + 1, units_s]
                _add_product(self.gram_[m][s], block, block, unscale, (lo, lo + n), (lo, lo + n))
                lo += n
        self._move_means(tokens, batch_mean)
        self.batches_ += 1
        return self

    def _centre(self, models: dict, tokens: int, centred: torch.Tensor) -> tuple[dict, tuple | None]:
        """Steps 1-2 into the float32 batch matrix `centred` [tokens + 1, all units]; returns the batch
        means (float64 [units_m] per model) and, if some unit's deviations cannot be squared in float32,
        (model, unit set, unit, its largest |deviation|) of the first such unit, else None."""
        batch_mean = {}
        limit = _FLOAT32_SQUARE_MAX / (self.count_ + tokens) ** 0.5  # the Gram sums count_ + tokens squares
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
                if not torch.isfinite(mean).all():  # NaN or inf reach the mean (a free check), or the sum overflowed
                    _check_finite(x, m, s)
                    return batch_mean, (m, s, int(x.abs().amax(dim=0).argmax()), float(x.abs().max()))
                block = centred[:tokens, start:start + n]
                torch.sub(x, mean, out=block)  # any dtype -> float32 here
                outside = _outside(block, limit)
                if outside is not None:
                    return batch_mean, (m, s, *outside)
                rough.append(mean)
                start += n
            rest = centred[:tokens, lo:hi].sum(dim=0) / tokens
            batch_mean[m] = torch.cat(rough).double() + rest.double()
        # 2) Chan's correction for the batch mean differing from the state's, (n_a n_b / n) delta delta^T,
        #    rides along as one extra row of the batch matrix, so the GEMMs below add it for free.
        weight = self.count_ * tokens / (self.count_ + tokens)
        for m in self.models:
            row = weight ** 0.5 * (batch_mean[m] - self.mean_[m])  # float64 [units_m]
            if not bool((row.abs() <= limit).all()):
                unit = int(row.abs().argmax())
                return batch_mean, (m, self._set_of(m, unit), unit, float(row.abs().max()))
            centred[tokens, self.offsets[m]:self.offsets[m] + self.sizes[m]] = row.float()
        return batch_mean, None

    def _centre_scaled(self, models: dict, tokens: int, centred: torch.Tensor, outside: tuple
                       ) -> tuple[dict, torch.Tensor]:
        """Steps 1-2 for a batch whose deviations float32 cannot square: centred in float64, then each
        unit scaled by a power of two (exact) that brings its largest |deviation| into [1/2, 1), so the
        float32 GEMMs stay in range; returns the batch means and the powers of two [all units] that
        `_add_product` multiplies back. A float32 state cannot hold such moments: one line says so."""
        model, unit_set, unit, peak = outside
        if self.dtype == "float32":
            raise UniversalityError(
                f"model {model!r}, unit set {unit_set!r}: unit {unit} varies by up to {peak:.3g} around its batch "
                "mean, which float32 moments cannot square without overflow or underflow; use dtype='float64' "
                "(accumulate = 'float64' in a run's [compare]) or multiply the activations by a constant "
                "(correlations do not change)")
        wide = torch.empty(tokens + 1, self.total_units, dtype=torch.float64, device=self.device)
        batch_mean, weight = {}, self.count_ * tokens / (self.count_ + tokens)
        for m in self.models:
            means, start = [], self.offsets[m]
            for s, n in self.layout[m].items():
                x = models[m][s].to(self.device, torch.float64)
                means.append(x.mean(dim=0))
                _check_finite(means[-1], m, s, x)
                torch.sub(x, means[-1], out=wide[:tokens, start:start + n])
                start += n
            batch_mean[m] = torch.cat(means)
            wide[tokens, self.offsets[m]:start] = weight ** 0.5 * (batch_mean[m] - self.mean_[m])
        peak = wide.abs().amax(dim=0)  # [all units]
        too_large = ~(peak * (self.count_ + tokens) ** 0.5 <= _FLOAT64_SQUARE_MAX)  # NaN (inf - inf) too
        bad = too_large | ((peak > 0) & (peak < 1 / _FLOAT64_SQUARE_MAX))
        if bad.any():
            index = int(bad.nonzero()[0])
            m = next(m for m in reversed(self.models) if self.offsets[m] <= index)
            unit = index - self.offsets[m]
            raise UniversalityError(
                f"model {m!r}, unit set {self._set_of(m, unit)!r}: unit {unit} varies by up to "
                f"{float(peak[index]):.3g} around its batch mean, beyond what float64 moments can square; multiply "
                "the activations by a constant (correlations do not change)")
        unscale = torch.ldexp(torch.ones_like(peak), torch.frexp(peak).exponent)  # 2^e: peak = f 2^e, f in [1/2, 1)
        torch.div(wide, unscale, out=wide)  # exact: powers of two
        centred.copy_(wide)
        return batch_mean, unscale

    def _set_of(self, model: str, unit: int) -> str:
        """The unit set holding `unit` (an index into the model's concatenated units)."""
        for name, size in self.layout[model].items():
            if unit < size:
                return name
            unit -= size
        raise IndexError(unit)

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

    def end_stream(self) -> "MomentAccumulator":
        """Free the batch scratch matrix ([batch + 1, all units] float32) once the stream is done, so a
        finished state holds only its moments; the next `update` allocates it again. Returns self."""
        self._scratch = None
        return self

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


def _add_product(target: torch.Tensor, left: torch.Tensor, right: torch.Tensor, unscale: torch.Tensor | None = None,
                 rows: tuple = (0, None), columns: tuple = (0, None)) -> None:
    """target += left^T right for float32 [tokens, a] and [tokens, b]: the hot GEMM, in place.

    With `unscale` (powers of two [all units] from a scaled batch), the product is multiplied back,
    entry (i, j) by unscale[rows][i] * unscale[columns][j], in float64."""
    if right.shape[1] == 0:
        return
    if unscale is not None:
        product = (left.T @ right).double()  # float32 GEMM of deviations scaled into [-1, 1]
        product.mul_(unscale[rows[0]:rows[1], None]).mul_(unscale[None, columns[0]:columns[1]])
        target.add_(product)
        return
    # Each batch's product goes into a fresh buffer, then one add into the state, column tile by
    # column tile (at most _PRODUCT_TILE entries at a time). Not addmm_ into the state: a GEMM with
    # beta = 1 adds its partial sums straight into the running total and rounds each at the total's
    # magnitude (a float32 Gram was 1.6% off after 153 batches of 65536 tokens, against 8e-6 here).
    step = max(1, _PRODUCT_TILE // max(left.shape[1], 1))
    for start in range(0, right.shape[1], step):
        target[:, start:start + step].add_(left.T @ right[:, start:start + step])  # float32 GEMM


def _outside(block: torch.Tensor, limit: float) -> tuple[int, float] | None:
    """(unit, largest |deviation|) of the first unit of a centred float32 block [tokens, units] whose
    squares float32 cannot sum: |deviation| above `limit` or, unless 0, below 2^-60 (squares under
    float32's normal range lose their digits). None if every unit is fine. NaN counts as outside."""
    peak = torch.maximum(block.amax(dim=0), -block.amin(dim=0))  # [units]; aminmax is 10x slower on a column slice
    fine = (peak == 0) | ((peak >= _FLOAT32_DEVIATION_MIN) & (peak <= limit))
    if bool(fine.all()):
        return None
    unit = int((~fine).nonzero()[0])
    return unit, float(peak[unit])


def _check_finite(values: torch.Tensor, model: str, unit_set: str, x: torch.Tensor | None = None) -> None:
    """One line if `values` (activations, or their mean) hold NaN or inf; with `x` given, a non-finite
    mean of finite activations means their sum overflowed float64."""
    if bool(torch.isfinite(values).all()):
        return
    if x is not None and bool(torch.isfinite(x).all()):
        raise UniversalityError(f"model {model!r}, unit set {unit_set!r}: activations sum beyond float64 range; "
                                "multiply them by a small constant (correlations do not change)")
    raise UniversalityError(f"model {model!r}, unit set {unit_set!r} has NaN or inf activations; pass finite values")
