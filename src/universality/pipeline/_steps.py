"""Steps every experiment kind shares: timing, training or loading seeds, streaming activations
into moments (resumable), and steps whose outputs are tables (skipped when made from the same
inputs and intact).

Every step's outputs carry a fingerprint of its inputs and the sha256 of each file; a step whose
outputs exist with the same fingerprint and digests is skipped, a damaged or stale one is
recomputed from its inputs. The moment stream saves its state as it goes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .._rundir import (file_digest, fingerprint, read_json, read_step_manifest, write_parquet_atomic,
                       write_step_manifest)
from ..compare import Comparison, compare_moments
from ..config import CompareConfig
from ..errors import UniversalityError
from ..moments import MomentAccumulator, TopActivations, load_moments, read_manifest, save_moments

__all__ = ["Progress", "quiet", "RunResult", "StepTimes", "CHECKPOINT_SECONDS", "train_or_load", "stream_moments",
           "saved_tables", "table_step", "compare_step"]

Progress = Callable[[str, int, int], None]  # (task description, done, total)

# the moment stream saves its state at most this often (the environment variable lets the
# kill-and-resume tests save after every batch)
CHECKPOINT_SECONDS = float(os.environ.get("UNIVERSALITY_CHECKPOINT_SECONDS", "20"))


def quiet(task: str, done: int, total: int) -> None:
    pass


@dataclass
class RunResult:
    run_dir: Path
    comparison: Comparison
    report: Path
    seconds: dict[str, float]  # wall time per step
    facts: dict[str, str] = field(default_factory=dict)  # the report's header facts
    notes: list[str] = field(default_factory=list)  # one line each: analyses left out, seeds flagged


class StepTimes:
    """Wall time per step: `with times("train"): ...` adds to `times.seconds["train"]`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start

    def text(self) -> str:
        return ", ".join(f"{step} {seconds:.1f}" for step, seconds in self.seconds.items())


def train_or_load(seeds: list[int], run_dir: Path, inputs: dict, *, load: Callable, train: Callable,
                  total: int, threads: int, on_progress: Progress, prefix: str = "") -> tuple[dict, dict]:
    """Per seed, `load(directory)` when `models/<prefix>seed-<k>/metadata.json` holds the fingerprint
    of `inputs` and the seed and the weights' sha256 matches, else `train(seed, directory,
    fingerprint, report)`, which must save the model with that fingerprint and call `report(done)`
    as it goes (`total` steps) on `threads` threads (named in the progress line). Returns
    ({name: what load or train returned}, {name: fingerprint})."""
    results, prints = {}, {}
    for seed in seeds:
        name = f"{prefix}seed-{seed}"
        directory = run_dir / "models" / name
        prints[name] = fingerprint(**inputs, seed=seed)
        saved = read_json(directory / "metadata.json")
        label = f"train {name} ({threads} thread{'s' if threads > 1 else ''})"
        intact = bool(saved) and saved.get("weights_sha256") == file_digest(directory / "weights.safetensors")
        if intact and saved.get("fingerprint") == prints[name]:
            results[name] = load(directory)
        else:
            on_progress(label, 0, total)
            results[name] = train(seed, directory, prints[name],
                                  lambda done, label=label: on_progress(label, done, total))
        on_progress(label, total, total)
    return results, prints


def stream_moments(run_name: str, step_print: str, directory: Path, total: int,
                   batches: Callable[[int], Iterator[tuple[dict, torch.Tensor]]], *, accumulate: str, device: str,
                   top_k: int, on_progress: Progress) -> tuple[MomentAccumulator, TopActivations]:
    """Accumulate `batches(start_batch)` (each `({model: {unit_set: Tensor[tokens, units]}}, global
    token index [tokens])`) into a moment state and, beside it, each unit's `top_k` largest
    activations and histogram (`TopActivations`), saved together in `directory`; resume a saved
    partial stream with the same fingerprint."""
    saved = read_manifest(directory)
    acc = top = None
    if saved and saved.get("fingerprint") == step_print:
        acc, manifest = load_moments(directory, device=device)
        top = TopActivations.from_state_dict(manifest["companions"], acc.layout)
        if saved.get("complete"):
            on_progress("stream activations", total, total)
            return acc, top
    start = acc.batches_ if acc else 0
    on_progress("stream activations", start, total)
    last_save = time.perf_counter()
    for index, (batch, token_ids) in enumerate(batches(start), start=start):
        if acc is None:
            layout = {m: {s: x.shape[1] for s, x in sets.items()} for m, sets in batch.items()}
            acc, top = MomentAccumulator(layout, dtype=accumulate, device=device), TopActivations(layout, k=top_k)
        try:
            acc.update(batch)
            top.update(batch, token_ids)
        except UniversalityError as error:
            raise UniversalityError(f"run {run_name}, evaluation batch {index}: {error}") from None
        on_progress("stream activations", index + 1, total)
        if time.perf_counter() - last_save > CHECKPOINT_SECONDS:
            save_moments(acc, directory, extra={"fingerprint": step_print, "complete": False},
                         companions=top.state_dict())
            last_save = time.perf_counter()
    if acc is None or acc.count_ < 2:
        raise UniversalityError(f"run {run_name}: no tokens left to compare after filtering; "
                                "stream more rows or filter fewer tokens")
    save_moments(acc, directory, extra={"fingerprint": step_print, "complete": True}, companions=top.state_dict())
    return acc.end_stream(), top


def saved_tables(tables_dir: Path, step: str, step_print: str | None = None) -> dict[str, pd.DataFrame] | None:
    """The tables of `step` saved in `tables_dir` when its manifest `<step>.json` is there (with
    `step_print`, when given) and every listed file has its recorded sha256; else None."""
    saved = read_step_manifest(tables_dir, name=f"{step}.json")
    if not saved or (step_print is not None and saved["fingerprint"] != step_print):
        return None
    return {Path(file).stem: pd.read_parquet(tables_dir / file) for file in saved["files"]}


def table_step(tables_dir: Path, step: str, step_print: str,
               compute: Callable[[], dict[str, pd.DataFrame]], **extra) -> dict[str, pd.DataFrame]:
    """The tables of one step: the saved ones when made from the same inputs and intact
    (`saved_tables`), else `compute()`, written as `tables_dir/<name>.parquet` with the step's
    manifest `<step>.json` last (fingerprint, each file's sha256 and the `extra` settings)."""
    saved = saved_tables(tables_dir, step, step_print)
    if saved is not None:
        return saved
    tables = compute()
    (tables_dir / f"{step}.json").unlink(missing_ok=True)  # the tables below are in flux until it is back
    files = {f"{name}.parquet": write_parquet_atomic(tables_dir / f"{name}.parquet", frame)
             for name, frame in tables.items()}
    write_step_manifest(tables_dir, step_print, files, name=f"{step}.json", **extra)
    return tables


def compare_step(moments: MomentAccumulator, moments_print: str, compare: CompareConfig, run_dir: Path,
                 on_progress: Progress) -> Comparison:
    """Universality tables from the moments (`compare_moments` with the config's threshold,
    rotations and seed), or the saved ones when made from the same inputs; the settings are stored
    in `tables/compare.json` beside the tables they made (`univ report` reads them from there)."""
    on_progress("compare", 0, 1)

    def compute() -> dict[str, pd.DataFrame]:
        comparison = compare_moments(moments, threshold=compare.threshold, rotations=compare.rotations,
                                     seed=compare.seed)
        return {"units": comparison.units, "pairs": comparison.pairs, "layers": comparison.layers}
    settings = compare.model_dump(exclude={"accumulate", "top_k"})  # threshold, rotations, seed
    tables = table_step(run_dir / "tables", "compare", fingerprint(moments=moments_print, compare=settings), compute,
                        settings=settings)
    on_progress("compare", 1, 1)
    return Comparison(moments, tables["units"], tables["pairs"], threshold=compare.threshold,
                      rotations=compare.rotations, seed=compare.seed)
