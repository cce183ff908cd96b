"""The synthetic-language experiment (`univ demo`): train seeds, stream their activations once,
compare, report.

config -> train seeds -> stream activations into moments -> compare -> tables -> neuron statistics
and families (a second, cheaper pass: moments and per-feature sums of every MLP neuron) -> report.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from .._rundir import fingerprint, write_parquet_atomic
from ..neurons import label_features, neuron_table, position_buckets, previous_token, row_context, unigram
from ..collect import batch_count, select_unit_sets, stream_activations, token_mask
from ..config import ExperimentConfig
from ..models import TinyTransformer, adapt, fold_layernorm
from ..tasks import SyntheticLanguage
from ..train import load_checkpoint, save_checkpoint, train_seed
from ._steps import Progress, RunResult, compare_step, open_run_dir, quiet, stream_moments, train_or_load

__all__ = ["run_language"]


def run_language(config: ExperimentConfig, *, runs_dir: str | Path = "runs",
                 on_progress: Progress = quiet) -> RunResult:
    """Run (or resume) the synthetic-language experiment `config` in `runs_dir/<config.name>`."""
    from ..api import render_report
    language = SyntheticLanguage(config.language)
    unit_sets = _plan(config, language)  # every check that needs no data, before anything is written
    run_dir = open_run_dir(runs_dir, config)
    seconds = {}
    start = time.perf_counter()
    models, curves, model_prints = _train(config, language, run_dir, on_progress)
    seconds["train"] = time.perf_counter() - start
    start = time.perf_counter()
    collect = config.collect
    moments_print = fingerprint(models=model_prints, collect=collect.model_dump(),
                                language=config.language.model_dump(), accumulate=config.compare.accumulate)
    sample = language.sample(collect.rows, seed=collect.eval_seed)
    tokens = sample.tokens  # [rows, seq_len]

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
    neurons = _neurons(config, language, sample, models, comparison.units, on_progress)
    if neurons is not None:
        write_parquet_atomic(run_dir / "tables" / "neurons.parquet", neurons)
    seconds["neurons"] = time.perf_counter() - start
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


def _neurons(config: ExperimentConfig, language: SyntheticLanguage, sample, models: dict, units, on_progress):
    """The neurons table (`analyze.neuron_table`) of the compared hook_post sets, over the evaluation
    rows: moments, families by variance reduction against the tokens, positions and the language's
    ground-truth labels, and weight statistics. None when no hook_post set was compared."""
    post = [s for s in units.unit_set.unique() if s.endswith("mlp.hook_post")]
    if not post:
        return None
    sets = [name for s in post for name in (s.replace("hook_post", "hook_pre"), s)]
    collect = config.collect
    drop = [language.bos] if collect.drop_bos else []
    labels = {k: sample.labels[k] for k in ("class", "depth", "in_repeat")}
    total = batch_count(collect.rows, collect.batch_rows)

    def batches():
        stream = stream_activations(models, sample.tokens, unit_sets=sets, batch_rows=collect.batch_rows,
                                    drop_tokens=drop, device=config.device)
        for index, batch in enumerate(stream):
            rows = slice(index * collect.batch_rows, (index + 1) * collect.batch_rows)
            keep = token_mask(sample.tokens[rows], drop).reshape(-1)  # the tokens `batch` kept
            context = row_context(sample.tokens[rows], {k: v[rows] for k, v in labels.items()})
            context = {k: ({n: x[keep] for n, x in v.items()} if k == "labels" else v[keep]) for k, v in context.items()}
            on_progress("neuron statistics", index + 1, total)
            yield batch, context
    vocab = language.token_names
    features = [unigram(vocab), previous_token(vocab),
                position_buckets(list(range(0, config.language.seq_len, config.language.position_period))),
                label_features("class"), label_features("depth"), label_features("in_repeat")]
    weights = {name: fold_layernorm(adapt(model).weights()) for name, model in models.items()}
    units = units[units.unit_set.isin(post)]
    return neuron_table(batches(), units=units, feature_sets=features, weights=weights)


def _plan(config: ExperimentConfig, language: SyntheticLanguage) -> list[str]:
    """Build one model to check the shape and the unit-set names; returns the selected unit sets."""
    probe = TinyTransformer(config.model, vocab_size=language.vocab_size, n_ctx=config.language.seq_len)
    return select_unit_sets(probe.unit_sets(), config.collect.unit_sets)


def _train(config: ExperimentConfig, language: SyntheticLanguage, run_dir: Path, on_progress: Progress):
    """Train every seed, or load it when its checkpoint was made from the same inputs."""
    shape = dict(vocab_size=language.vocab_size, n_ctx=config.language.seq_len)

    def load(directory):
        model, metadata = load_checkpoint(directory, config.model, **shape)
        return model, metadata["curve"]

    def train(seed, directory, print_, report):
        trained = train_seed(language, config.model, config.train, seed, device=config.device,
                             on_step=lambda step, loss: report(step))
        save_checkpoint(directory, trained.model, {"fingerprint": print_, "seed": seed, "seconds": trained.seconds,
                                                   "curve": trained.curve, "config": config.model.model_dump()})
        return trained.model, trained.curve
    inputs = dict(language=config.language.model_dump(), model=config.model.model_dump(),
                  train=config.train.model_dump())
    seeds, prints = train_or_load(config.seeds, run_dir, inputs, load=load, train=train, total=config.train.steps,
                                  on_progress=on_progress)
    models = {name: model.to(config.device) for name, (model, _) in seeds.items()}
    curves = {name: pd.DataFrame(curve) for name, (_, curve) in seeds.items()}
    return models, curves, prints
