"""The moments-and-compare step of every experiment kind: a plan of passes within the memory budget
(`moments.plan_passes`), streamed with checkpoints, resumed at the pass and batch it had reached,
reduced into the universality tables (skipped when made from the same inputs and intact).

Later passes read the activations back from an on-disk cache when it fits (`_activation_cache`).

Run directory (`moments/`):
    state.safetensors           pass 1: means, Grams (and, in a one-pass plan, every cross block),
                                the top activations, the reservoir of token rows (a one-pass local
                                plan asked for one) and, after pass k, the maxima of passes 1..k
    pass-<k>/state.safetensors  the running state of pass k > 1 (removed when the pass is reduced)
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .._inputs import check_batch
from .._rundir import fingerprint
from ..compare import Comparison
from ..compare._maxima import PairMaxima
from ..compare._passes import run_plan
from ..compare._sketch import check_sketch_settings, compare_sketch, sketch_rules
from ..config import CalibrationConfig, CompareConfig, ScaleConfig
from ..distributed import SourceFactory, pass_streamer
from ..errors import UniversalityError, short_repr
from ..moments import (DEFAULT_BUDGET_FRACTION, Layout, MomentAccumulator, Plan, TopActivations, available_memory,
                       layout_of, load_moments, parse_bytes, plan_passes, save_moments)
from ..similarity import Reservoir
from ._activation_cache import choose_cache
from ._steps import Progress, saved_tables, table_step, thread_count

__all__ = ["stream_and_compare", "resolve_budget", "plan_for", "plan_fact"]

# the stream saves its state at most this often, and at least 10 times as long apart as a save takes
# (a large state costs seconds to write); the environment variable lets the kill-and-resume tests
# save after every batch (0)
CHECKPOINT_SECONDS = float(os.environ.get("UNIVERSALITY_CHECKPOINT_SECONDS", "20"))
_MAXIMA = "maxima/"  # prefix of the maxima tensors among pass 1's companions


def resolve_budget(budget, device: str) -> int | None:
    """Bytes from `[scale] memory_budget`: "auto" = DEFAULT_BUDGET_FRACTION of the device's available
    memory, "none" = no budget (one pass), else a size ("12GiB") or a number of bytes."""
    if budget == "none":
        return None
    if budget == "auto":
        return int(DEFAULT_BUDGET_FRACTION * available_memory(device))
    return parse_bytes(budget)


def plan_for(layout: dict, batch_tokens: int, compare: CompareConfig, scale: ScaleConfig, device: str) -> Plan:
    """The plan of passes a run of this layout follows (what `univ plan` prints)."""
    return plan_passes(layout, budget=resolve_budget(scale.memory_budget, device), dtype=compare.accumulate,
                       batch_tokens=batch_tokens, rotations=compare.rotations,
                       rotation=compare.rotation)


def stream_and_compare(run_name: str, moments_print: str, run_dir: Path, total: int,
                       batches: Callable[[int], Iterator[tuple[dict, torch.Tensor]]], *, layout: Layout,
                       batch_tokens: int, compare: CompareConfig, scale: ScaleConfig, device: str,
                       on_progress: Progress, factory: SourceFactory, threads: int | None = None,
                       calibration: CalibrationConfig | None = None, reservoir: Reservoir | None = None
                       ) -> tuple[Comparison, TopActivations, dict | None]:
    """Universality of the activations `batches(start_batch)` yields (each `({model: {unit_set:
    Tensor[tokens, units]}}, global token index [tokens])`), with each unit's top activations from
    the first pass; `total` batches per pass. `layout` {model: {unit_set: units}} and `batch_tokens`
    (the first batch's) are what the stream will yield (`collect.stream_layout`): they make the plan
    without a forward pass, so a comparison already saved runs no model; a stream that does run is
    checked against them first. Tables are saved in `run_dir/tables` (step "compare").
    With `scale.backend = "ray"` Ray workers stream the same batches from `factory` (a picklable
    `distributed.SourceFactory`), a token shard each, resuming only at whole passes. `threads`: the torch
    threads the caller pinned, named in the progress line (None: not named). `calibration` (enabled):
    the tables gain calibrated universality (`Comparison.calibrate`) when the plan has one pass, whose
    state holds the cross-moments; a multi-pass plan or a sketch leaves it out. `reservoir` (empty, of
    `layout`): fed every batch of the first pass beside the moments and saved with them, so a resumed
    run continues it and a finished one reads it back; kept by a one-pass local plan only (the state
    metrics need one pass; Ray workers stream their own shards). Returns (comparison, top activations,
    the reservoir's rows {model: {unit_set: float32 [rows, units]}} or None when none was kept)."""
    if scale.mode == "sketch":
        return (*_sketch_and_compare(run_name, moments_print, run_dir, total, batches, layout=layout,
                                     batch_tokens=batch_tokens, compare=compare, scale=scale, device=device,
                                     on_progress=on_progress), None)
    plan = plan_for(layout, batch_tokens, compare, scale, device)
    if len(plan.passes) > 1 or scale.backend != "local":
        reservoir = None
    settings = compare.model_dump(exclude={"accumulate", "top_k"})  # threshold, rotations, seed, rotation
    calibrate = calibration is not None and calibration.enabled and len(plan.passes) == 1
    if calibrate:
        settings["calibration"] = calibration.model_dump(exclude={"enabled"})
    tables_print = fingerprint(moments=moments_print, compare=settings)
    kept = {} if reservoir is None else {"reservoir": [reservoir.size, reservoir.seed]}
    store = _RunDirStore(run_dir / "moments", fingerprint(moments=moments_print, plan=plan.to_dict()["passes"],
                                                          **kept), TopActivations(layout, k=compare.top_k), reservoir)
    saved = _saved_comparison(run_dir, tables_print, store, len(plan.passes), compare, plan)
    if saved is not None:
        on_progress("stream activations", total, total)
        return saved, store.top, store.rows()
    try:
        _check_first_batch(batches, layout, batch_tokens)
    except UniversalityError as error:
        raise UniversalityError(f"run {run_name}: {error}") from None
    passes, last_save = len(plan.passes), [time.perf_counter(), 0.0]  # when, and how long it took
    batch_bytes = 4 * batch_tokens * sum(sum(sets.values()) for sets in layout.values())
    cache = None if scale.backend != "local" else choose_cache(scale.activation_cache, run_dir, passes, total,
                                                               batch_bytes)  # Ray workers stream their own shards

    def source(start: int):
        if source.pass_index > 0 and cache is not None and cache.complete():
            yield from cache.read(start)
            return
        number = start  # by hand, and each batch let go once yielded: the next is built while none is held
        for batch, token_ids in batches(start):
            if source.pass_index == 0:
                store.top.update(batch, token_ids)
                if store.sample is not None:
                    store.sample.update(batch)  # stream order: its positions continue from the saved count
                if cache is not None:
                    cache.write(number, batch)
            yield batch
            del batch, token_ids
            number += 1
    source.pass_index = 0

    def label(index: int) -> str:
        notes = [f"pass {index + 1} of {passes}"] if passes > 1 else []
        notes += [] if threads is None else [thread_count(threads)]
        return "stream activations" + (f" ({', '.join(notes)})" if notes else "")

    def on_batch(index: int, number: int, acc: MomentAccumulator) -> None:
        on_progress(label(index), number + 1, total)
        interval = CHECKPOINT_SECONDS and max(CHECKPOINT_SECONDS, 10 * last_save[1])  # 0: after every batch
        if number + 1 < total and time.perf_counter() - last_save[0] >= interval:  # the last is saved reduced
            started = time.perf_counter()
            store.save(index, acc)
            last_save[:] = [time.perf_counter(), time.perf_counter() - started]

    def on_pass(index: int, start: int) -> None:
        source.pass_index = index
        on_progress(label(index), start, total)
    try:
        with _tf32(scale.tf32 and str(device).startswith("cuda")), \
                pass_streamer(scale.backend, plan, factory, total, address=scale.address, workers=scale.workers,
                              device=device, top_k=compare.top_k, on_top=lambda top: setattr(store, "top", top),
                              on_job=lambda index, done: on_progress(label(index), done, total)) as stream_pass:
            comparison = run_plan(plan, source, threshold=compare.threshold, rotations=compare.rotations,
                                  seed=compare.seed, device=device, rotation_kind=compare.rotation, store=store,
                                  on_batch=on_batch, on_pass=on_pass, stream_pass=stream_pass)
    except UniversalityError as error:
        raise UniversalityError(f"run {run_name}, evaluation {error}") from None
    if cache is not None:
        cache.remove()
    if calibrate:
        comparison = comparison.calibrate(rotations=calibration.rotations, alpha=calibration.alpha)
    return _with_saved_tables(run_dir, tables_print, comparison, settings), store.top, store.rows()


def _sketch_and_compare(run_name: str, moments_print: str, run_dir: Path, total: int, batches, *, layout: Layout,
                        batch_tokens: int, compare: CompareConfig, scale: ScaleConfig, device: str,
                        on_progress: Progress) -> tuple[Comparison, TopActivations]:
    """`stream_and_compare` in sketch mode (`[scale] mode = "sketch"`, `compare._sketch`): a seeded
    subsample of every batch, then every token for the candidate pairs only; `units` gains
    `barely_seen`. Nothing is checkpointed inside it (a killed run streams it again); the
    subsample's means and Grams and the top activations (from the first stream, every token) are
    saved with the tables, so a finished run is not streamed again."""
    subsample, candidates = check_sketch_settings("sketch", scale.subsample, scale.candidates)
    settings = compare.model_dump(exclude={"accumulate", "top_k"}) | {"mode": "sketch", "subsample": subsample,
                                                                      "candidates": candidates} | sketch_rules()
    tables_print = fingerprint(moments=moments_print, compare=settings)
    store = _RunDirStore(run_dir / "moments", fingerprint(moments=moments_print, sketch=settings,
                                                          dtype=compare.accumulate),
                         TopActivations(layout, k=compare.top_k))
    saved = _saved_comparison(run_dir, tables_print, store, 1, compare, None)
    if saved is not None:
        on_progress("stream activations (sketch)", total, total)
        return saved, store.top
    try:
        _check_first_batch(batches, layout, batch_tokens)
    except UniversalityError as error:
        raise UniversalityError(f"run {run_name}: {error}") from None
    streams = [0]

    def make():
        stream, streams[0] = streams[0], streams[0] + 1
        label = f"stream activations (sketch, stream {stream + 1}: {'subsample' if stream == 0 else 'again'})"
        for number, (batch, token_ids) in enumerate(batches(0)):
            if stream == 0:
                store.top.update(batch, token_ids)
            on_progress(label, number + 1, total)
            yield batch
    try:
        comparison = compare_sketch(make, layout, batch_tokens, subsample=subsample, candidates=candidates,
                                    threshold=compare.threshold, rotations=compare.rotations, seed=compare.seed,
                                    device=device, dtype=compare.accumulate,
                                    budget=resolve_budget(scale.memory_budget, device), rotation=compare.rotation)
    except UniversalityError as error:
        raise UniversalityError(f"run {run_name}, evaluation {error}") from None
    store.finish(0, comparison.moments, None)
    return _with_saved_tables(run_dir, tables_print, comparison, settings), store.top


def _saved_comparison(run_dir: Path, tables_print: str, store: "_RunDirStore", passes: int, compare: CompareConfig,
                      plan: Plan | None) -> Comparison | None:
    """The comparison already made from these inputs: its intact tables (step "compare") and the saved
    state of all `passes`; None when either is missing."""
    saved = saved_tables(run_dir / "tables", "compare", tables_print)
    if saved is None or store.completed()[0] != passes:
        return None
    first, _ = store.load(0)
    return Comparison(first, saved["units"], saved["pairs"], threshold=compare.threshold,
                      rotations=compare.rotations, seed=compare.seed, plan=plan)


def _with_saved_tables(run_dir: Path, tables_print: str, comparison: Comparison, settings: dict) -> Comparison:
    """`comparison` with its tables saved as step "compare" (or read back when saved from these inputs)."""
    tables = table_step(run_dir / "tables", "compare", tables_print,
                        lambda: {"units": comparison.units, "pairs": comparison.pairs, "layers": comparison.layers},
                        settings=settings)
    comparison.units, comparison.pairs = tables["units"], tables["pairs"]
    return comparison


def _check_first_batch(batches: Callable[[int], Iterator], layout: Layout, batch_tokens: int) -> None:
    """Before a stream runs: its first batch is a valid batch (`check_batch`; models may name their unit
    sets differently) of the layout and token count the plan was made for."""
    batch, _ = next(iter(batches(0)), (None, None))
    if batch is None:
        raise UniversalityError("no tokens left to compare after filtering; stream more rows or filter fewer tokens")
    models = check_batch(batch, min_models=2)
    seen = layout_of(models)
    tokens = next(iter(next(iter(models.values())).values())).shape[0]
    for model in {**layout, **seen}:
        if seen.get(model) != layout.get(model):
            raise UniversalityError(f"model {model!r} streams the unit sets {short_repr(seen.get(model))}, its adapter "
                                    f"declares {short_repr(layout.get(model))}; they must match")
    if tokens != batch_tokens:
        raise UniversalityError(f"the first batch has {tokens} tokens where {batch_tokens} were planned")


@contextmanager
def _tf32(allow: bool):
    """CUDA matmuls in TF32 inside the block when `allow`; the previous setting restored after."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def plan_fact(comparison: Comparison) -> str:
    """The report's header fact on how the comparison fit the machine: passes and memory budget."""
    plan = comparison.plan
    if plan is None:
        return "one pass"
    budget = "no memory budget" if plan.budget is None else f"memory budget {plan.budget / 2**30:.2f} GiB"
    return f"{len(plan.passes)} pass{'es' if len(plan.passes) > 1 else ''} over the data ({budget})"


class _RunDirStore:
    """`compare._passes.PassStore` in a run directory (module docstring), every save atomic."""

    def __init__(self, directory: Path, plan_print: str, top: TopActivations, sample: Reservoir | None = None):
        self.directory, self.plan_print, self.top, self.sample = directory, plan_print, top, sample
        self._cache: dict = {}  # pass 1's state as last read, until the next save

    def _path(self, index: int) -> Path:
        return self.directory if index == 0 else self.directory / f"pass-{index}"

    def _loaded(self, index: int) -> tuple[MomentAccumulator, dict] | None:
        """Pass `index`'s saved state and manifest when intact and of this plan, else None. Pass 1's is
        read once until the next save (2.1 GiB of Grams for 5 GPT-2s; `completed` and `load` both need it)."""
        if index in self._cache:
            return self._cache[index]
        try:
            acc, manifest = load_moments(self._path(index), device="cpu")
        except UniversalityError:  # missing or damaged: no state
            return None
        loaded = (acc, manifest) if manifest.get("fingerprint") == self.plan_print else None
        if index == 0:
            self._cache[0] = loaded
        return loaded

    def load(self, index: int) -> tuple[MomentAccumulator | None, bool]:
        loaded = self._loaded(index)
        if loaded is None:
            return None, False
        acc, manifest = loaded
        if index == 0:
            self.top = TopActivations.from_state_dict(manifest["companions"], acc.layout)
            if self.sample is not None:  # saved beside the same batches' moments (its count is theirs)
                self.sample = Reservoir.from_state_dict(manifest["companions"], acc.layout)
        return acc, bool(manifest.get("complete"))

    def save(self, index: int, acc: MomentAccumulator, complete: bool = False) -> None:
        self._cache.clear()
        save_moments(acc, self._path(index), extra={"fingerprint": self.plan_print, "complete": complete},
                     companions=self._companions() if index == 0 else None)

    def _companions(self) -> dict[str, torch.Tensor]:
        """Pass 1's tensors beside the moments: the top activations and the reservoir, if one is kept."""
        return self.top.state_dict() | ({} if self.sample is None else self.sample.state_dict())

    def rows(self) -> dict | None:
        """The reservoir's rows {model: {unit_set: float32 [rows, units]}}, or None when none is kept."""
        return None if self.sample is None else self.sample.rows_

    def completed(self) -> tuple[int, dict | None]:
        """(passes reduced so far, the maxima after them) from pass 1's saved state."""
        loaded = self._loaded(0)
        if loaded is None or not loaded[1].get("passes_done"):
            return 0, None
        manifest = loaded[1]
        maxima = {k[len(_MAXIMA):]: v for k, v in manifest["companions"].items() if k.startswith(_MAXIMA)}
        return int(manifest["passes_done"]), maxima or None

    def finish(self, index: int, first: MomentAccumulator, maxima: PairMaxima | None) -> None:
        """Pass `index` is reduced: save pass 1's state with the maxima so far; drop pass `index`'s."""
        self._cache.clear()
        companions = self._companions()
        if maxima is not None:
            companions |= {f"{_MAXIMA}{k}": v for k, v in maxima.state_dict().items()}
        save_moments(first, self.directory, companions=companions,
                     extra={"fingerprint": self.plan_print, "complete": True, "passes_done": index + 1})
        if index:
            shutil.rmtree(self._path(index), ignore_errors=True)
