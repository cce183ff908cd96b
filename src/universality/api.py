"""The Python entry points the CLI calls: the whole pipeline over a run directory.

config -> train seeds -> stream activations into moments -> compare -> tables -> report.
Each step is skipped when its outputs exist for the same inputs (fingerprints), and the moment
stream checkpoints as it goes, so an interrupted run started again finishes with the same tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ._rundir import fingerprint, read_json, resolved_config_text, write_parquet_atomic, write_text_atomic
from .collect import batch_count, select_unit_sets, stream_activations
from .compare import Comparison, compare_moments, layer_summary
from .config import ExperimentConfig
from .errors import UniversalityError
from .models import TinyTransformer
from .moments import MomentAccumulator, load_moments, read_manifest, save_moments
from .tasks import SyntheticLanguage
from .train import load_checkpoint, save_checkpoint, train_seed

__all__ = ["run_experiment", "RunResult", "render_report", "load_run", "Progress"]

Progress = Callable[[str, int, int], None]  # (task description, done, total)

_CHECKPOINT_SECONDS = 20.0  # the moment stream saves its state at most this often


@dataclass
class RunResult:
    run_dir: Path
    comparison: Comparison
    report: Path
    seconds: dict[str, float]  # wall time per step


def _quiet(task: str, done: int, total: int) -> None:
    pass


def run_experiment(config: ExperimentConfig, *, runs_dir: str | Path = "runs",
                   on_progress: Progress = _quiet) -> RunResult:
    """Run (or resume) the experiment `config` in `runs_dir/<config.name>`."""
    language = SyntheticLanguage(config.language)
    unit_sets = _plan(config, language)  # every check that needs no data, before anything is written
    run_dir = Path(runs_dir) / config.name
    if run_dir.exists() and not run_dir.is_dir():
        raise UniversalityError(f"run directory {str(run_dir)!r} exists and is not a directory")
    write_text_atomic(run_dir / "config.toml", resolved_config_text(config.model_dump()))
    seconds = {}
    start = time.perf_counter()
    models, curves, model_prints = _train(config, language, run_dir, on_progress)
    seconds["train"] = time.perf_counter() - start
    start = time.perf_counter()
    moments, moments_print = _moments(config, language, models, unit_sets, model_prints, run_dir, on_progress)
    seconds["moments"] = time.perf_counter() - start
    start = time.perf_counter()
    comparison = _compare(config, moments, moments_print, run_dir, on_progress)
    seconds["compare"] = time.perf_counter() - start
    start = time.perf_counter()
    on_progress("write report", 0, 1)
    facts = {
        "models": f"{len(config.seeds)} seeds of a {config.model.n_layers}-layer transformer "
                  f"(d_model {config.model.d_model}, d_mlp {config.model.d_mlp}, {config.model.activation})",
        "tokens streamed": f"{moments.count_:,} ({config.collect.rows} rows, BOS "
                           f"{'dropped' if config.collect.drop_bos else 'kept'})",
        "unit sets": ", ".join(unit_sets),
        "rotations in the baseline": str(config.compare.rotations),
        "step times (s)": ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()),
    }
    report = render_report(run_dir, comparison, curves, facts=facts)
    on_progress("write report", 1, 1)
    seconds["report"] = time.perf_counter() - start
    return RunResult(run_dir, comparison, report, seconds)


def _plan(config: ExperimentConfig, language: SyntheticLanguage) -> list[str]:
    """Build one model to check the shape and the unit-set names; returns the selected unit sets."""
    probe = TinyTransformer(config.model, vocab_size=language.vocab_size, n_ctx=config.language.seq_len)
    return select_unit_sets(probe.unit_sets(), config.collect.unit_sets)


def _train(config: ExperimentConfig, language: SyntheticLanguage, run_dir: Path, on_progress: Progress):
    """Train every seed, or load it when its checkpoint was made from the same inputs."""
    models, curves, prints = {}, {}, {}
    shape = dict(vocab_size=language.vocab_size, n_ctx=config.language.seq_len)
    for seed in config.seeds:
        name = f"seed-{seed}"
        directory = run_dir / "models" / name
        prints[name] = fingerprint(language=config.language.model_dump(), model=config.model.model_dump(),
                                   train=config.train.model_dump(), seed=seed)
        saved = read_json(directory / "metadata.json")
        task = f"train {name}"
        if saved and saved.get("fingerprint") == prints[name]:
            model, metadata = load_checkpoint(directory, config.model, **shape)
            on_progress(task, config.train.steps, config.train.steps)
        else:
            on_progress(task, 0, config.train.steps)
            trained = train_seed(language, config.model, config.train, seed, device=config.device,
                                 on_step=lambda step, loss, task=task: on_progress(task, step, config.train.steps))
            model = trained.model
            metadata = {"fingerprint": prints[name], "seed": seed, "seconds": trained.seconds,
                        "curve": trained.curve, "config": config.model.model_dump()}
            save_checkpoint(directory, model, metadata)
        models[name] = model.to(config.device)
        curves[name] = pd.DataFrame(metadata["curve"])
    return models, curves, prints


def _moments(config, language, models, unit_sets, model_prints, run_dir, on_progress):
    """Stream the evaluation rows through every model once; resume a saved partial stream."""
    collect = config.collect
    step_print = fingerprint(models=model_prints, collect=collect.model_dump(), language=config.language.model_dump(),
                             accumulate=config.compare.accumulate)
    directory = run_dir / "moments"
    total = batch_count(collect.rows, collect.batch_rows)
    saved = read_manifest(directory)
    acc = None
    if saved and saved.get("fingerprint") == step_print:
        acc, _ = load_moments(directory, device=config.device)
        if saved.get("complete"):
            on_progress("stream activations", total, total)
            return acc, step_print
    tokens = language.sample(collect.rows, seed=collect.eval_seed).tokens  # [rows, seq_len]
    start = acc.batches_ if acc else 0
    on_progress("stream activations", start, total)
    last_save = time.perf_counter()
    stream = stream_activations(models, tokens, unit_sets=unit_sets, batch_rows=collect.batch_rows,
                                drop_tokens=[language.bos] if collect.drop_bos else [], start_batch=start,
                                device=config.device)
    for index, batch in enumerate(stream, start=start):
        if acc is None:
            acc = MomentAccumulator({m: {s: x.shape[1] for s, x in sets.items()} for m, sets in batch.items()},
                                    dtype=config.compare.accumulate, device=config.device)
        try:
            acc.update(batch)
        except UniversalityError as error:
            raise UniversalityError(f"run {config.name}, evaluation batch {index}: {error}") from None
        on_progress("stream activations", index + 1, total)
        if time.perf_counter() - last_save > _CHECKPOINT_SECONDS:
            save_moments(acc, directory, extra={"fingerprint": step_print, "complete": False})
            last_save = time.perf_counter()
    if acc is None or acc.count_ < 2:
        raise UniversalityError(f"run {config.name}: no tokens left to compare after filtering; "
                                "raise collect.rows or set collect.drop_bos = false")
    save_moments(acc, directory, extra={"fingerprint": step_print, "complete": True})
    return acc, step_print


def _compare(config, moments, moments_print, run_dir, on_progress) -> Comparison:
    """Universality tables from the moments, or the saved ones when made from the same inputs."""
    settings = config.compare.model_dump(exclude={"accumulate"})
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


def render_report(run_dir: Path, comparison: Comparison, curves: dict[str, pd.DataFrame], *,
                  facts: dict[str, str]) -> Path:
    """Write plots and report.html for `comparison` into `run_dir`."""
    from .report import write_report
    config_path = Path(run_dir) / "config.toml"
    return write_report(Path(run_dir), units=comparison.units, pairs=comparison.pairs,
                        layers=layer_summary(comparison.units), curves=curves,
                        threshold=comparison.threshold, title=f"Universal neurons: {Path(run_dir).name}",
                        config_text=config_path.read_text() if config_path.is_file() else "",
                        facts=facts)


def load_run(run_dir: str | Path) -> tuple[Comparison, dict[str, pd.DataFrame]]:
    """The comparison (tables and moments) and training curves saved in a finished run directory."""
    run_dir = Path(run_dir)
    tables = run_dir / "tables"
    if not (tables / "units.parquet").is_file() or read_manifest(run_dir / "moments") is None:
        raise UniversalityError(f"{str(run_dir)!r} holds no finished run (tables/ and moments/ missing); "
                                "run `univ run CONFIG` first")
    from .config import load_config
    compare = load_config(run_dir / "config.toml").compare
    moments, _ = load_moments(run_dir / "moments")
    comparison = Comparison(moments, pd.read_parquet(tables / "units.parquet"),
                            pd.read_parquet(tables / "pairs.parquet"),
                            **compare.model_dump(exclude={"accumulate"}))
    curves = {}
    for metadata_path in sorted((run_dir / "models").glob("*/metadata.json")):
        metadata = read_json(metadata_path) or {}
        curves[metadata_path.parent.name] = pd.DataFrame(metadata.get("curve", []))
    return comparison, curves
