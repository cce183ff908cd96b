"""Steps every experiment kind shares: streaming activations into moments (resumable) and
turning moments into universality tables (skipped when made from the same inputs).

Each step's outputs carry a fingerprint of its inputs; a step whose outputs exist with the same
fingerprint is skipped, and the moment stream saves its state as it goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .._rundir import fingerprint, read_json, resolved_config_text, write_parquet_atomic, write_text_atomic
from ..compare import Comparison, compare_moments
from ..errors import UniversalityError
from ..moments import MomentAccumulator, load_moments, read_manifest, save_moments

__all__ = ["Progress", "quiet", "RunResult", "CHECKPOINT_SECONDS", "open_run_dir", "train_or_load", "stream_moments",
           "compare_step"]

Progress = Callable[[str, int, int], None]  # (task description, done, total)


CHECKPOINT_SECONDS = 20.0  # the moment stream saves its state at most this often


def quiet(task: str, done: int, total: int) -> None:
    pass


@dataclass
class RunResult:
    run_dir: Path
    comparison: Comparison
    report: Path
    seconds: dict[str, float]  # wall time per step


def open_run_dir(runs_dir: str | Path, config) -> Path:
    """`runs_dir/<config.name>`, with the resolved config (and provenance) written into it; called
    after every check that needs no data, so bad input never touches an existing run."""
    run_dir = Path(runs_dir) / config.name
    if run_dir.exists() and not run_dir.is_dir():
        raise UniversalityError(f"run directory {str(run_dir)!r} exists and is not a directory")
    write_text_atomic(run_dir / "config.toml", resolved_config_text(config.model_dump()))
    return run_dir


def train_or_load(seeds: list[int], run_dir: Path, inputs: dict, *, load: Callable, train: Callable,
                  total: int, on_progress: Progress, prefix: str = "") -> tuple[dict, dict]:
    """Per seed, `load(directory)` when `models/seed-<k>/metadata.json` holds the fingerprint of
    `inputs` and the seed, else `train(seed, directory, fingerprint, report)`, which must save the
    model with that fingerprint and call `report(done)` as it goes (`total` steps).
    Seeds are named `<prefix>seed-<k>`. Returns ({name: what load or train returned}, {name: fingerprint})."""
    results, prints = {}, {}
    for seed in seeds:
        name = f"{prefix}seed-{seed}"
        directory = run_dir / "models" / name
        prints[name] = fingerprint(**inputs, seed=seed)
        saved = read_json(directory / "metadata.json")
        label = f"train {name}"
        if saved and saved.get("fingerprint") == prints[name]:
            results[name] = load(directory)
        else:
            on_progress(label, 0, total)
            results[name] = train(seed, directory, prints[name],
                                  lambda done, label=label: on_progress(label, done, total))
        on_progress(label, total, total)
    return results, prints


def stream_moments(run_name: str, step_print: str, directory: Path, total: int,
                   batches: Callable[[int], Iterator[dict]], *, accumulate: str, device: str,
                   on_progress: Progress) -> MomentAccumulator:
    """Accumulate `batches(start_batch)` (each `{model: {unit_set: Tensor[tokens, units]}}`) into a
    moment state saved in `directory`; resume a saved partial stream with the same fingerprint."""
    saved = read_manifest(directory)
    acc = None
    if saved and saved.get("fingerprint") == step_print:
        acc, _ = load_moments(directory, device=device)
        if saved.get("complete"):
            on_progress("stream activations", total, total)
            return acc
    start = acc.batches_ if acc else 0
    on_progress("stream activations", start, total)
    last_save = time.perf_counter()
    for index, batch in enumerate(batches(start), start=start):
        if acc is None:
            acc = MomentAccumulator({m: {s: x.shape[1] for s, x in sets.items()} for m, sets in batch.items()},
                                    dtype=accumulate, device=device)
        try:
            acc.update(batch)
        except UniversalityError as error:
            raise UniversalityError(f"run {run_name}, evaluation batch {index}: {error}") from None
        on_progress("stream activations", index + 1, total)
        if time.perf_counter() - last_save > CHECKPOINT_SECONDS:
            save_moments(acc, directory, extra={"fingerprint": step_print, "complete": False})
            last_save = time.perf_counter()
    if acc is None or acc.count_ < 2:
        raise UniversalityError(f"run {run_name}: no tokens left to compare after filtering; "
                                "stream more rows or filter fewer tokens")
    save_moments(acc, directory, extra={"fingerprint": step_print, "complete": True})
    return acc


def compare_step(moments: MomentAccumulator, moments_print: str, settings: dict, run_dir: Path,
                 on_progress: Progress) -> Comparison:
    """Universality tables from the moments, or the saved ones when made from the same inputs."""
    step_print = fingerprint(moments=moments_print, compare=settings)
    tables = run_dir / "tables"
    on_progress("compare", 0, 1)
    saved = read_json(tables / "manifest.json")
    if saved and saved.get("fingerprint") == step_print and all(
            (tables / f"{t}.parquet").is_file() for t in ("units", "pairs", "layers")):
        comparison = Comparison(moments, pd.read_parquet(tables / "units.parquet"),
                                pd.read_parquet(tables / "pairs.parquet"), **settings)
    else:
        comparison = compare_moments(moments, **settings)
        write_text_atomic(tables / "manifest.json", "{}")  # tables below are in flux until the manifest
        write_parquet_atomic(tables / "units.parquet", comparison.units)
        write_parquet_atomic(tables / "pairs.parquet", comparison.pairs)
        write_parquet_atomic(tables / "layers.parquet", comparison.layers)
        write_text_atomic(tables / "manifest.json", f'{{"fingerprint": "{step_print}"}}')
    on_progress("compare", 1, 1)
    return comparison
