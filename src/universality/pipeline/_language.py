"""The synthetic-language experiment (`univ demo`): train seeds, stream their activations once,
compare, report.

config -> train seeds -> stream activations into moments -> compare -> tables -> report.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from .._rundir import fingerprint, read_json, resolved_config_text, write_text_atomic
from ..collect import batch_count, select_unit_sets, stream_activations
from ..config import ExperimentConfig
from ..errors import UniversalityError
from ..models import TinyTransformer
from ..tasks import SyntheticLanguage
from ..train import load_checkpoint, save_checkpoint, train_seed
from ._steps import Progress, RunResult, compare_step, quiet, stream_moments

__all__ = ["run_language"]


def run_language(config: ExperimentConfig, *, runs_dir: str | Path = "runs",
                 on_progress: Progress = quiet) -> RunResult:
    """Run (or resume) the synthetic-language experiment `config` in `runs_dir/<config.name>`."""
    from ..api import render_report
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
    collect = config.collect
    moments_print = fingerprint(models=model_prints, collect=collect.model_dump(),
                                language=config.language.model_dump(), accumulate=config.compare.accumulate)
    tokens = language.sample(collect.rows, seed=collect.eval_seed).tokens  # [rows, seq_len]

    def batches(start_batch: int):
        return stream_activations(models, tokens, unit_sets=unit_sets, batch_rows=collect.batch_rows,
                                  drop_tokens=[language.bos] if collect.drop_bos else [],
                                  start_batch=start_batch, device=config.device)
    moments = stream_moments(config.name, moments_print, run_dir / "moments",
                             batch_count(collect.rows, collect.batch_rows), batches,
                             accumulate=config.compare.accumulate, device=config.device, on_progress=on_progress)
    seconds["moments"] = time.perf_counter() - start
    start = time.perf_counter()
    comparison = compare_step(moments, moments_print, config.compare.model_dump(exclude={"accumulate"}),
                              run_dir, on_progress)
    seconds["compare"] = time.perf_counter() - start
    start = time.perf_counter()
    on_progress("write report", 0, 1)
    facts = {
        "models": f"{len(config.seeds)} seeds of a {config.model.n_layers}-layer transformer "
                  f"(d_model {config.model.d_model}, d_mlp {config.model.d_mlp}, {config.model.activation})",
        "tokens streamed": f"{moments.count_:,} ({collect.rows} rows, BOS "
                           f"{'dropped' if collect.drop_bos else 'kept'})",
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
