"""Running a plan: one stream per pass, each pass's cross blocks reduced into `PairMaxima` as
soon as the pass ends, so memory never exceeds one pass (`moments.plan_passes`).

Pass 0 holds every Gram; at its end the baseline scales are computed from them and kept. Every
later pass must see the same tokens: its token count and means are checked against pass 0's.
A `PassStore` (optional) saves the maxima after each reduced pass and checkpoints the running
pass, so an interrupted run resumes at the pass (and batch) it had reached. A pass's state comes
from one stream here or, with `stream_pass`, from elsewhere (the Ray backend, `universality.distributed`:
token shards streamed by workers and merged); the reduction is the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from ..errors import UniversalityError
from ..moments import MomentAccumulator, Plan, normalize_batch
from ._comparison import Comparison, compare_moments
from ._correlation import dead_units
from ._maxima import PairMaxima, baseline_scales
from ._universality import tables_from_maxima

__all__ = ["PassStore", "run_plan", "stream_passes", "rerunnable", "skip", "return_freed_memory", "first_batch",
           "check_batches"]

Source = Callable[[int], Iterable]  # start batch -> the batches from there on


class PassStore(Protocol):
    """Where a planned run keeps its progress (the pipeline's run directory; None: in memory only)."""

    def load(self, index: int) -> tuple[MomentAccumulator | None, bool]:
        """The saved state of pass `index` and whether its stream was complete; (None, False): none."""

    def save(self, index: int, acc: MomentAccumulator) -> None:
        """Checkpoint the running state of pass `index`."""

    def completed(self) -> tuple[int, dict | None]:
        """(passes reduced so far, the `PairMaxima.state_dict()` after them or None)."""

    def finish(self, index: int, first: MomentAccumulator, maxima: PairMaxima | None) -> None:
        """Pass `index` is reduced into `maxima` (None: a one-pass plan, `first` holds everything)."""


def run_plan(plan: Plan, source: Source | None, *, threshold: float, rotations: int, seed: int, device: str = "cpu",
             rotation_kind: str = "auto", store: PassStore | None = None,
             on_batch: Callable[[int, int, MomentAccumulator], None] | None = None,
             on_pass: Callable[[int, int], None] | None = None,
             stream_pass: Callable[[int], MomentAccumulator] | None = None,
             on_state: Callable[[MomentAccumulator, MomentAccumulator], None] | None = None) -> Comparison:
    """Stream `source(start_batch)` once per pass of `plan` and return the `Comparison`.

    A one-pass plan keeps the whole state (`Comparison.moments` as from `compare_moments`); a
    multi-pass one keeps pass 0's means and Grams as `moments`; `Comparison.plan` is `plan`.
    `on_pass(pass index, start batch)` runs before a pass streams, `on_batch(pass index, batch index,
    accumulator)` after every batch (progress, checkpoints). `stream_pass(pass index)`, when given,
    returns the complete state of a pass in place of streaming `source` here (`source`, `on_batch`
    and `on_pass` are then unused); a pass saved complete in `store` is still read from it.
    `on_state(state, first)` runs on every pass's finished state, before its cross blocks are reduced
    (`first`: pass 0's, holding every Gram)."""
    done, saved = store.completed() if store is not None else (0, None)

    def stream(index: int) -> MomentAccumulator:
        if stream_pass is None:
            return _stream_pass(plan, index, source, device, store, on_batch, on_pass)
        acc, complete = store.load(index) if store is not None else (None, False)
        return acc if acc is not None and complete else _enough_tokens(stream_pass(index))
    first = stream(0)
    if len(plan.passes) == 1:
        if on_state is not None:
            on_state(first, first)
        if store is not None and not done:
            store.finish(0, first, None)
        comparison = compare_moments(first, threshold=threshold, rotations=rotations, seed=seed,
                                     rotation_kind=rotation_kind)
        comparison.plan = plan
        return comparison
    scales = baseline_scales(first, rotations=rotations, seed=seed, kind=rotation_kind)
    maxima = PairMaxima(first.layout, rotations)
    if saved is not None:  # the passes before `done` are folded into the saved maxima
        maxima.load_state_dict(saved)
    for index in range(done, len(plan.passes)):
        acc = first if index == 0 else stream(index)
        if index:
            _check_same_stream(first, acc, index)
        if on_state is not None:
            on_state(acc, first)
        for block in [b for b in acc.blocks_ if not b.is_gram]:
            maxima.add_block(block, acc.blocks_[block], scales)
        _keep_grams(first)
        if store is not None:
            store.finish(index, first, maxima)
        del acc
        return_freed_memory()
    dead = {m: dead_units(first, m).numpy() for m in first.models}
    units, pairs = tables_from_maxima(maxima, dead, threshold=threshold)
    return Comparison(first, units, pairs, threshold=threshold, rotations=rotations, seed=seed, plan=plan)


def stream_passes(plan: Plan, source: Source, *, device: str,
                  on_state: Callable[[MomentAccumulator, MomentAccumulator], None]) -> MomentAccumulator:
    """Stream `source(0)` once per pass of `plan` and hand every pass's finished state to
    `on_state(state, first)` (`first`: pass 0's, holding every Gram), with no reduction of its own and
    no store; returns pass 0's state with its cross blocks dropped (its means and Grams)."""
    first = _stream_pass(plan, 0, source, device, None, None, None)
    on_state(first, first)
    _keep_grams(first)
    for index in range(1, len(plan.passes)):
        acc = _stream_pass(plan, index, source, device, None, None, None)
        _check_same_stream(first, acc, index)
        on_state(acc, first)
        del acc
        return_freed_memory()
    return first


def _stream_pass(plan: Plan, index: int, source: Source, device: str, store: PassStore | None,
                 on_batch, on_pass) -> MomentAccumulator:
    """The state of pass `index` after the whole stream (resumed from `store` when saved)."""
    acc, complete = store.load(index) if store is not None else (None, False)
    if acc is not None and complete:
        return acc
    blocks = None if len(plan.passes) == 1 else plan.passes[index]
    acc = acc or MomentAccumulator(plan.layout, dtype=plan.dtype, device=device, blocks=blocks)
    start = acc.batches_
    if on_pass is not None:
        on_pass(index, start)
    number = start  # counted by hand: enumerate's cached result tuple would hold the batch until the next one
    for batch in source(start):
        try:
            acc.update(batch)
        except UniversalityError as error:
            where = f"pass {index + 1} of {len(plan.passes)}, " if len(plan.passes) > 1 else ""
            raise UniversalityError(f"{where}batch {number}: {error}") from None
        if on_batch is not None:
            on_batch(index, number, acc)
        del batch  # not held while the source builds the next one
        number += 1
    return _enough_tokens(acc).end_stream()


def _enough_tokens(acc: MomentAccumulator) -> MomentAccumulator:
    """`acc`, after checking it saw the 2 tokens a correlation needs."""
    if acc.count_ < 2:
        raise UniversalityError(f"need at least 2 tokens to correlate, the stream had {acc.count_}")
    return acc


def return_freed_memory() -> None:
    """Give the pages of freed blocks back to the system (glibc `malloc_trim`; elsewhere nothing), once a
    pass is reduced: glibc keeps freed heap pages, and the next pass's blocks did not always fit in
    them (the peak RSS of a 4-pass plan was 1.16 x the budget without this). Not a lower mmap
    threshold: every product tile would then be mapped afresh and page-faulted each batch (a 4-pass
    plan ran at 0.25 x the speed of one pass that way)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _keep_grams(acc: MomentAccumulator) -> None:
    """Drop `acc`'s cross blocks once reduced: pass 0 keeps only its Grams and means."""
    acc.blocks_ = {block: values for block, values in acc.blocks_.items() if block.is_gram}


def _check_same_stream(first: MomentAccumulator, other: MomentAccumulator, index: int) -> None:
    """Pass `index` saw the tokens of pass 0: same count and the same means (to float32 rounding of
    the batch means relative to each unit's spread)."""
    if other.count_ != first.count_:
        raise UniversalityError(f"pass {index + 1} saw {other.count_} tokens but pass 1 saw {first.count_}; the "
                                "batches must be the same in every pass (pass a callable that yields them again)")
    for m in first.models:
        spread = (first.variance(m) / first.count_).sqrt()
        gap = (other.mean_[m] - first.mean_[m]).abs()
        if bool((gap > 1e-5 * spread + 1e-6 * first.mean_[m].abs() + 1e-30).any()):
            unit = int((gap - 1e-5 * spread).argmax())
            raise UniversalityError(f"pass {index + 1} saw different activations than pass 1 (model {m!r}, unit {unit}: "
                                    f"mean {float(other.mean_[m][unit]):.6g} vs {float(first.mean_[m][unit]):.6g}); "
                                    "the batches must be the same in every pass")


def first_batch(batch) -> tuple[dict, int]:
    """The checked first batch of a stream ({model: {unit_set: Tensor[tokens, units]}}) and its token
    count; one line if the stream is empty (None) or the batch is bad."""
    if batch is None:
        raise UniversalityError("the activation stream is empty: pass at least one batch")
    try:
        models = normalize_batch(batch)
    except UniversalityError as error:
        raise UniversalityError(f"batch 0: {error}") from None
    return models, next(iter(next(iter(models.values())).values())).shape[0]


def check_batches(batches) -> None:
    """One line unless `batches` is an iterable of batches (not a single batch) or a callable returning one."""
    if isinstance(batches, Mapping) or not (isinstance(batches, Iterable) or callable(batches)):
        raise UniversalityError(f"batches must be an iterable of {{model: {{unit_set: Tensor}}}} dicts (or a callable "
                                f"returning one), got a {type(batches).__name__}; wrap a single batch in a list: [batch]")


def rerunnable(batches) -> tuple[Callable[[], Iterable], bool]:
    """(a function returning the batches afresh, whether it can be called more than once)."""
    if callable(batches):
        return batches, True
    if isinstance(batches, (list, tuple)):
        return lambda: batches, True
    return (lambda: batches), False


def skip(make: Callable[[], Iterable], start: int) -> Iterable:
    """The batches of `make()` from batch `start` on."""
    iterator = iter(make())
    for _ in range(start):
        if next(iterator, None) is None:
            return iter(())
    return iterator

