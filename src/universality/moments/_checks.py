"""Checks of every batch a moment state takes: finite activations, and deviations from the mean
whose squares the float32 batch GEMMs can sum.

A float32 square overflows at 2^128 and loses its digits below 2^-126 (subnormal); a float64 one at
2^1024 and 2^-1022. A float32 state takes |x - mean| in [2^-60, 2^62 / sqrt(tokens in the state)]
(or exactly 0) and refuses other batches; a float64 state rescales them (`MomentAccumulator`).

When the checks are read:
- at once (the default on CPU): one host read per batch, before the batch is added; a bad batch
  raises and leaves the state as it was.
- deferred (the default elsewhere, e.g. CUDA, where a read stalls the stream; or `check_every`):
  `DeferredChecks` keeps, per unit set, the first failing batch on the device and is read every
  `every` batches and when the state is read (`MomentAccumulator.check`). A bad batch is named
  then, and the state already holds it and the batches after it: it must be streamed again.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import UniversalityError

__all__ = ["BatchChecks", "DeferredChecks", "first_failure", "deviation_peaks", "check_finite", "refuse_float32",
           "read", "FLOAT32_SQUARE_MAX", "FLOAT64_SQUARE_MAX"]

FLOAT32_SQUARE_MAX = 2.0**62  # divided by sqrt(tokens in the state); margins keep products exact
FLOAT32_DEVIATION_MIN = 2.0**-60
FLOAT64_SQUARE_MAX = 2.0**500
_KINDS = (("has NaN or inf activations (or finite ones whose float32 sum overflows)", "pass finite values"),
          ("varies around its mean by more than float32 moments can square, or by less than 2^-60",
           "use dtype='float64' or multiply the activations by a constant (correlations do not change)"))


class BatchChecks(NamedTuple):
    """One batch's checks, on the device: `finite` bool [unit sets] (a finite batch mean), `peak` float32
    [all units] (largest |deviation| from the batch mean), `row` float64 [all units] (Chan's correction
    row: the shift of means), `limit` (the largest |deviation| whose squares a float32 sum of the state's
    tokens holds)."""
    finite: torch.Tensor
    peak: torch.Tensor
    row: torch.Tensor
    limit: float

    def fine(self) -> torch.Tensor:
        """bool [all units]: deviations and correction row in float32's range."""
        return in_float32_range(self.peak, self.limit) & (self.row.abs() <= self.limit)

    def failed(self, spans: list) -> torch.Tensor:
        """bool [unit sets, 2], on the device: a non-finite mean; a deviation or correction out of range.
        `spans`: (model, unit set, start, stop) in global units (`unit_set_spans`)."""
        fine = self.fine()
        return torch.stack([~self.finite, torch.stack([~fine[a:b].all() for *_, a, b in spans])], 1)


def first_failure(models: dict, checks: BatchChecks, spans: list) -> tuple | None:
    """None if a batch `{model: {unit_set: Tensor}}` passes `checks` (one host read); else (model, unit
    set, unit, its largest |deviation|) of the first unit float32 cannot square. NaN or inf activations
    raise one line. `spans` as in `BatchChecks.failed`."""
    if read(checks.finite.all() & checks.fine().all()):
        return None
    for i, (m, s, start, stop) in enumerate(spans):
        if not bool(checks.finite[i]):  # NaN or inf activations, or a float32 sum that overflowed
            x = models[m][s]
            check_finite(x, m, s)
            return m, s, int(x.abs().amax(dim=0).argmax()), float(x.abs().max())
        outside = ~in_float32_range(checks.peak[start:stop], checks.limit)
        if bool(outside.any()):
            unit = int(outside.nonzero()[0])
            return m, s, unit, float(checks.peak[start + unit])
    for m in dict.fromkeys(model for model, *_ in spans):  # the correction row: the batch mean moved too far
        own = [span for span in spans if span[0] == m]
        row = checks.row[own[0][2]:own[-1][3]].abs()  # [units_m]
        if not bool((row <= checks.limit).all()):
            unit = int(row.argmax())
            unit_set = next(s for _, s, a, b in own if a <= own[0][2] + unit < b)
            return m, unit_set, unit, float(row[unit])
    raise AssertionError("unreachable: some check failed")


def read(flags: torch.Tensor):
    """`flags` as Python values (`tolist`): the one place a batch's checks wait for the device."""
    return flags.tolist()


def deviation_peaks(block: torch.Tensor) -> torch.Tensor:
    """Largest |deviation| per unit of a centred block [tokens, units] -> [units] (NaN stays NaN)."""
    return torch.maximum(block.amax(dim=0), -block.amin(dim=0))  # aminmax is 10x slower on a column slice


def in_float32_range(peak: torch.Tensor, limit: float) -> torch.Tensor:
    """bool, shaped as `peak` (|deviations|): squares float32 can sum, |x| <= `limit` and, unless 0,
    >= 2^-60 (squares under float32's normal range lose their digits). NaN is out of range."""
    return (peak == 0) | ((peak >= FLOAT32_DEVIATION_MIN) & (peak <= limit))


def check_finite(values: torch.Tensor, model: str, unit_set: str, x: torch.Tensor | None = None) -> None:
    """One line if `values` (activations, or their mean) hold NaN or inf; with `x` given, a non-finite
    mean of finite activations means their sum overflowed float64."""
    if bool(torch.isfinite(values).all()):
        return
    if x is not None and bool(torch.isfinite(x).all()):
        raise UniversalityError(f"model {model!r}, unit set {unit_set!r}: activations sum beyond float64 range; "
                                "multiply them by a small constant (correlations do not change)")
    raise UniversalityError(f"model {model!r}, unit set {unit_set!r} has NaN or inf activations; pass finite values")


def refuse_float32(model: str, unit_set: str, unit: int, peak: float) -> None:
    """The one line a float32 state gives for deviations it cannot square."""
    raise UniversalityError(
        f"model {model!r}, unit set {unit_set!r}: unit {unit} varies by up to {peak:.3g} around its batch "
        "mean, which float32 moments cannot square without overflow or underflow; use dtype='float64' "
        "(accumulate = 'float64' in a run's [compare]) or multiply the activations by a constant "
        "(correlations do not change)")


class DeferredChecks:
    """The first failing batch of each check, kept on the device until read.

    `first_bad` : int64 [unit sets, 2] on the device, -1 where nothing failed; column 0: a non-finite
    batch mean, column 1: a deviation outside float32's range (`kinds` words both for the error).
    `unread`: batches added since the last read; a read is due every `every` of them.
    """

    def __init__(self, unit_sets: list[tuple[str, str]], every: int, device: str, kinds: tuple = _KINDS,
                 again: str = "stream again (or resume from a state saved before batch {batch})"):
        self.unit_sets, self.every, self.unread = unit_sets, every, 0
        self.kinds = kinds  # per column: (the problem, its fix)
        self.again = again  # what to do once fixed; "{batch}" is the failed batch
        self.first_bad = torch.full((len(unit_sets), 2), -1, dtype=torch.int64, device=device)

    def add(self, failed: torch.Tensor, batch: int) -> bool:
        """Record `failed` (bool [unit sets, 2]) of batch number `batch` on the device, without reading
        it; returns whether a read is due."""
        self.first_bad.masked_fill_((self.first_bad < 0) & failed, batch)
        self.unread += 1
        return self.unread >= self.every

    def read(self, batches: int) -> None:
        """One host read; raises one line naming the earliest failed batch (the state holds `batches`
        batches, the failed one among them). Stays failed: every later read raises again."""
        if not self.unread:
            return
        first_bad = read(self.first_bad)
        failures = [(batch, kind, i) for i, row in enumerate(first_bad) for kind, batch in enumerate(row) if batch >= 0]
        if not failures:
            self.unread = 0
            return
        batch, kind, i = min(failures)
        (model, unit_set), (problem, fix) = self.unit_sets[i], self.kinds[kind]
        raise UniversalityError(
            f"model {model!r}, unit set {unit_set!r} {problem} in batch {batch} of this state, found by the checks "
            f"kept on the device (read every {self.every} batches) once batches {batch} to {batches - 1} were added: "
            f"the state cannot be used; {fix}, then {self.again.format(batch=batch)}")
