"""Steps every experiment kind shares: timing, training or loading seeds, and steps whose outputs
are tables (skipped when made from the same inputs and intact). Streaming and comparing is
`_planned.stream_and_compare`.

Every step's outputs carry a fingerprint of its inputs and the sha256 of each file; a step whose
outputs exist with the same fingerprint and digests is skipped, a damaged or stale one is
recomputed from its inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .._rundir import (file_digest, fingerprint, read_json, read_step_manifest, write_parquet_atomic,
                       seed_name, write_step_manifest)
from ..compare import Comparison, compare_moments
from ..config import CompareConfig
from ..errors import UniversalityError
from ..moments import MomentAccumulator, TopActivations, load_moments, read_manifest, save_moments

__all__ = ["Progress", "quiet", "thread_count", "RunResult", "StepTimes", "train_or_load", "saved_tables",
           "table_step"]

Progress = Callable[[str, int, int], None]  # (task description, done, total)

def quiet(task: str, done: int, total: int) -> None:
    pass


def thread_count(threads: int) -> str:
    """"1 thread" or "<n> threads", as a progress line names the torch threads a step runs on."""
    return f"{threads} thread{'s' if threads > 1 else ''}"


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
        name = seed_name(seed, prefix)
        directory = run_dir / "models" / name
        prints[name] = fingerprint(**inputs, seed=seed)
        saved = read_json(directory / "metadata.json")
        label = f"train {name} ({thread_count(threads)})"
        intact = bool(saved) and saved.get("weights_sha256") == file_digest(directory / "weights.safetensors")
        if intact and saved.get("fingerprint") == prints[name]:
            results[name] = load(directory)
        else:
            on_progress(label, 0, total)
            results[name] = train(seed, directory, prints[name],
                                  lambda done, label=label: on_progress(label, done, total))
        on_progress(label, total, total)
    return results, prints


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
