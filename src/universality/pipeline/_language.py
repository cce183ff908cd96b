"""The synthetic-language experiment (`univ demo`): train seeds, stream their activations once,
compare, describe the neurons, report.

config -> train seeds -> stream activations into moments -> compare -> neurons table (moments,
families against the tokens, positions and the language's ground-truth labels, weights) -> report;
with `[training_dynamics]`, the seeds compared again at each kept checkpoint (`_training_dynamics`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd

from .._rundir import fingerprint, seed_name
from .._threads import resolve_threads, torch_threads
from ..collect import batch_count, select_unit_sets, stream_activations, stream_layout
from ..neurons import label_features, position_buckets, previous_token, unigram
from ..config import ExperimentConfig
from ..distributed import ActivationSource, trained_models
from ..models import TinyTransformer, adapt
from ..similarity import Reservoir
from ..tasks import SyntheticLanguage
from ..tokens import keep_mask
from ..train import (checkpoint_epochs, load_checkpoint, load_checkpoint_models, save_checkpoint, train_seed,
                     with_checkpoints)
from ._neurons import neuron_step
from ._posterior import next_token
from ._report import RunRecord, context_tables
from ._run import execute, pinned_threads, trained_inputs
from ._circuits import circuit_step
from ._saes import check_sae_inputs, sae_step
from ._similarity import reservoir_rows
from ._planned import plan_fact, resolve_budget, stream_and_compare
from ._steps import Progress, RunResult, StepTimes, quiet, table_step, train_or_load
from ._training_dynamics import check_dynamics_steps, training_dynamics_step

__all__ = ["run_language"]

_LABELS = ("class", "depth", "in_repeat")  # the language's ground-truth token labels, as extra features


def run_language(config: ExperimentConfig, *, runs_dir: str | Path = "runs",
                 on_progress: Progress = quiet) -> RunResult:
    """Run (or resume) the synthetic-language experiment `config` in `runs_dir/<config.name>`."""
    language = SyntheticLanguage(config.language)
    unit_sets = _plan(config, language)  # every check that needs no data, before anything is written
    check_dynamics_steps(config.training_dynamics, checkpoint_epochs(config.train.steps, config.train.checkpoints))
    collect = config.collect
    drop = [language.bos] if collect.drop_bos else []
    sample = language.sample(collect.rows, seed=collect.eval_seed)  # tokens [rows, seq_len] and labels
    kept_rows = reservoir_rows(config.similarity, int(keep_mask(sample.tokens, drop).sum()))

    def body(run_dir: Path, times: StepTimes) -> RunRecord:
        with times("train"):
            models, checkpoints, curves, model_prints = _train(config, language, run_dir, on_progress)
        adapters = {name: adapt(model, name=name, bos_token_id=language.bos) for name, model in models.items()}
        with times("moments and compare"):
            moments_print = fingerprint(models=model_prints, collect=collect.model_dump(),
                                        language=config.language.model_dump(), accumulate=config.compare.accumulate,
                                        top_k=config.compare.top_k)

            stream = dict(unit_sets=unit_sets, batch_rows=collect.batch_rows, drop_tokens=drop)
            layout, batch_tokens = stream_layout(adapters, sample.tokens, **stream)

            def batches(start_batch: int):
                return stream_activations(adapters, sample.tokens, **stream, start_batch=start_batch,
                                          device=config.device, token_index=True)
            comparison, top, reservoir = stream_and_compare(config.name, moments_print, run_dir,
                                                 batch_count(collect.rows, collect.batch_rows), batches,
                                                 layout=layout, batch_tokens=batch_tokens,
                                                 compare=config.compare, scale=config.scale, calibration=config.calibration, device=config.device,
                                                 on_progress=on_progress, factory=ActivationSource(
                                                     partial(trained_models, models, bos_token_id=language.bos),
                                                     sample.tokens, unit_sets, collect.batch_rows, drop),
                                                 reservoir=None if kept_rows is None else Reservoir(
                                                     layout, kept_rows, seed=config.similarity.seed))
            moments = comparison.moments
        with times("neurons"):
            vocab = language.token_names
            features = [unigram(vocab), previous_token(vocab),
                        position_buckets(list(range(0, config.language.seq_len, config.language.position_period))),
                        *(label_features(label) for label in _LABELS)]
            neurons, notes = neuron_step(run_dir, adapters, sample.tokens, inputs_print=moments_print,
                                         units=comparison.units, feature_sets=features, drop=drop,
                                         batch_rows=collect.batch_rows, on_progress=on_progress,
                                         memory_budget=resolve_budget(config.scale.memory_budget, config.device),
                                         seed=config.compare.seed, labels={label: sample.labels[label] for label in _LABELS},
                                         feature_tokens={"class": _class_tokens(language)})
        with times("circuits"):
            circuits = circuit_step(run_dir, config.train, language, adapters, config.seeds,
                                    eval_seed=collect.eval_seed, models_print=moments_print)
        with times("saes"):
            saes, sae_notes = sae_step(run_dir, config.sae, adapters=adapters, language=language,
                                       eval_tokens=sample.tokens, eval_labels={l: sample.labels[l] for l in _LABELS},
                                       feature_sets=features, drop=drop, batch_rows=collect.batch_rows,
                                       compare=config.compare, calibration=config.calibration,
                                       models_print=moments_print, on_progress=on_progress)
            notes = notes + sae_notes
        facts = {
            "models": f"{len(config.seeds)} seeds of a {config.model.n_layers}-layer transformer "
                      f"(d_model {config.model.d_model}, d_mlp {config.model.d_mlp}, {config.model.activation})",
            "tokens streamed": f"{moments.count_:,} ({collect.rows} rows, BOS "
                               f"{'dropped' if collect.drop_bos else 'kept'})",
            "unit sets": ", ".join(unit_sets),
            "rotations in the baseline": str(comparison.rotations),
            "passes": plan_fact(comparison),
        }
        if config.training_dynamics.enabled:
            with times("training dynamics"):
                dynamics, dynamics_notes = training_dynamics_step(
                    run_dir / "tables", config.training_dynamics, checkpoints,
                    lambda step_models: stream_activations(
                        {n: adapt(m.to(config.device), name=n, bos_token_id=language.bos)
                         for n, m in step_models.items()}, sample.tokens, **stream, device=config.device),
                    compare=config.compare, models_print=model_prints)
            notes = notes + dynamics_notes
        tables = table_step(run_dir / "tables", "contexts", moments_print,
                            lambda: context_tables(sample.tokens, [f" {name}" for name in language.token_names]))
        if neurons is not None:
            tables["neurons"] = neurons
        tables |= (saes or {}) | circuits
        if config.training_dynamics.enabled:
            tables |= dynamics
        return RunRecord(comparison, curves, facts, tables, notes=notes, top_activations=top, reservoir=reservoir,
                         predictions=next_token(adapters, sample.tokens, collect.batch_rows, moments_print))
    # one thread count for the whole run: a resumed run that loads its seeds instead of training them
    # (training sets the count) would otherwise stream and compare on torch's default, rounding otherwise
    with torch_threads(resolve_threads(config.train.threads)):
        return execute(config, runs_dir, body)


def _class_tokens(language: SyntheticLanguage, shown: int = 6) -> dict[str, str]:
    """{class label: the first `shown` tokens of that class, "c7_t0 c7_t1 ... (12 tokens)"}, for every
    label of `token_class` (the content classes, then BOS, brackets and position markers)."""
    classes = language.token_class.tolist()
    names = {}
    for label in sorted(set(classes)):
        tokens = [name for name, c in zip(language.token_names, classes) if c == label]
        names[str(label)] = " ".join(tokens[:shown]) + (f" ... ({len(tokens)} tokens)" if len(tokens) > shown else "")
    return names


def _plan(config: ExperimentConfig, language: SyntheticLanguage) -> list[str]:
    """Build one model to check the shape and the unit-set names; returns the selected unit sets."""
    probe = TinyTransformer(config.model, vocab_size=language.vocab_size, n_ctx=config.language.seq_len)
    check_sae_inputs(config.sae, probe.unit_sets(), [seed_name(seed) for seed in config.seeds])
    return select_unit_sets(probe.unit_sets(), config.collect.unit_sets)


def _train(config: ExperimentConfig, language: SyntheticLanguage, run_dir: Path, on_progress: Progress):
    """Train every seed, or load it when its checkpoint was made from the same inputs."""
    shape = dict(vocab_size=language.vocab_size, n_ctx=config.language.seq_len)
    train_config = pinned_threads(config.train)

    def load(directory):
        model, metadata = load_checkpoint(directory, config.model, **shape)
        return model, metadata["curve"], load_checkpoint_models(directory, config.model, **shape)

    def train(seed, directory, print_, report):
        trained = train_seed(language, config.model, train_config, seed, device=config.device,
                             on_step=lambda step, loss: report(step))
        save_checkpoint(directory, with_checkpoints(trained.model.state_dict(), trained.checkpoints),
                        {"fingerprint": print_, "seed": seed, "seconds": trained.seconds, "curve": trained.curve,
                         "config": config.model.model_dump(), "checkpoint_steps": sorted(trained.checkpoints)})
        return trained.model, trained.curve, load_checkpoint_models(directory, config.model, **shape)
    inputs = dict(language=config.language.model_dump(), model=config.model.model_dump(),
                  train=trained_inputs(config.train))
    seeds, prints = train_or_load(config.seeds, run_dir, inputs, load=load, train=train, total=config.train.steps,
                                  threads=train_config.threads, on_progress=on_progress)
    models = {name: model.to(config.device) for name, (model, _, _) in seeds.items()}
    checkpoints = {name: by_step for name, (_, _, by_step) in seeds.items()}  # {name: {step: model on cpu}}
    curves = {name: pd.DataFrame(curve) for name, (_, curve, _) in seeds.items()}
    return models, checkpoints, curves, prints
