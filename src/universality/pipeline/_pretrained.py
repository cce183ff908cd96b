"""The pretrained-models experiment (`kind = "pretrained"`): existing models (GPT-2 / Pythia seed
families, BERT-like encoders), loaded offline, streamed once over one token stream, compared, and
their neurons described.

config -> load models (one tokenizer, and `seq_len` within every model's context: checked) -> token
rows -> stream unit activations into moments -> compare -> neuron statistics and families (a second,
cheaper pass) -> report; with `[training_dynamics]`, each model's listed checkpoint directories compared at
every step they share (`_training_dynamics`); with `circuits = true`, each model's indirect-object circuit on
English prompts built with its tokenizer (`_circuits`). The whole run uses `threads` torch threads, resolved once.
"""

from __future__ import annotations

import hashlib
import math
import re
from functools import partial
from pathlib import Path

import torch

from .._rundir import fingerprint
from .._threads import resolve_threads, torch_threads
from ..collect import batch_count, select_unit_sets, stream_activations, stream_layout
from ..config import DataConfig, PretrainedExperimentConfig
from ..distributed import ActivationSource, pretrained_models
from ..errors import UniversalityError, short_repr
from ..models import load_model
from ..neurons import alphabet, head_scores, match_heads, position_buckets, previous_token, token_strings, unigram
from ..similarity import Reservoir
from ..tokens import (check_same_tokenizer, drop_token_ids, keep_mask, tokens_from_dataset, tokens_from_numpy,
                      tokens_from_text_files)
from ._circuits import pretrained_circuit_step, text_ioi_task
from ._neurons import neuron_step
from ._posterior import next_token
from ._report import RunRecord, context_tables
from ._run import execute
from ._similarity import reservoir_rows
from ._planned import plan_fact, resolve_budget, stream_and_compare
from ._steps import Progress, RunResult, StepTimes, quiet, table_step
from ._training_dynamics import listed_checkpoints, training_dynamics_step

__all__ = ["run_pretrained", "token_rows"]


def run_pretrained(config: PretrainedExperimentConfig, *, runs_dir: str | Path = "runs",
                   on_progress: Progress = quiet) -> RunResult:
    """Run (or resume) the pretrained-models experiment `config` in `runs_dir/<config.name>`."""
    # 1) every check that needs no activations: models, tokenizers, unit sets, tokens
    adapters = _load(config)
    first = next(iter(adapters.values()))
    unit_sets = select_unit_sets(first.unit_sets, config.collect.unit_sets)
    for adapter in adapters.values():
        select_unit_sets(adapter.unit_sets, unit_sets)  # every model has them (one-line error if not)
    tokens = token_rows(config.data, first)  # [rows, seq_len]
    collect = config.collect
    threads = resolve_threads(config.threads)  # once: the run and its progress line use one number
    drop = drop_token_ids(first, bos=collect.drop_bos, pad=collect.drop_pad, newline=collect.drop_newline)
    kept_rows = reservoir_rows(config.similarity, int(keep_mask(tokens, drop).sum()))
    checkpoints = listed_checkpoints(config.training_dynamics, dict(zip(config.models, adapters)),
                                     {name: {s: a.unit_sets[s] for s in unit_sets} for name, a in adapters.items()},
                                     lambda directory: load_model(directory, device="cpu"))
    ioi_task = text_ioi_task(adapters) if config.circuits else None

    def body(run_dir: Path, times: StepTimes) -> RunRecord:
        # 2) one pass into moments; compare
        with times("moments and compare"):
            moments_print = fingerprint(models=config.models, tokens=hashlib.sha256(tokens.numpy().tobytes()).hexdigest(),
                                        collect=collect.model_dump(), accumulate=config.compare.accumulate,
                                        top_k=config.compare.top_k)

            stream = dict(unit_sets=unit_sets, batch_rows=collect.batch_rows, drop_tokens=drop)
            layout, batch_tokens = stream_layout(adapters, tokens, **stream)

            def batches(start_batch: int):
                return stream_activations(adapters, tokens, **stream, start_batch=start_batch, device=config.device,
                                          token_index=True)
            comparison, top, reservoir = stream_and_compare(config.name, moments_print, run_dir,
                                                 batch_count(tokens.shape[0], collect.batch_rows), batches,
                                                 layout=layout, batch_tokens=batch_tokens,
                                                 compare=config.compare, scale=config.scale, calibration=config.calibration, device=config.device,
                                                 on_progress=on_progress, factory=ActivationSource(
                                                     partial(pretrained_models, dict(zip(adapters, config.models))),
                                                     tokens, unit_sets, collect.batch_rows, drop), threads=threads,
                                                 reservoir=None if kept_rows is None else Reservoir(
                                                     layout, kept_rows, seed=config.similarity.seed))
            moments = comparison.moments
        # 3) neurons: moments, families, weights; heads
        neurons, notes = None, ["neuron statistics, families and roles left out (neurons = false in the config)"]
        if config.neurons:
            with times("neurons"):
                neurons, notes = neuron_step(run_dir, adapters, tokens, inputs_print=moments_print,
                                             units=comparison.units, feature_sets=_features(first, tokens.shape[1]),
                                             drop=drop, batch_rows=collect.batch_rows, on_progress=on_progress,
                                             memory_budget=resolve_budget(config.scale.memory_budget, config.device),
                                             seed=config.compare.seed)
        with times("heads"):
            heads = table_step(run_dir / "tables", "heads", moments_print,
                               lambda: {"heads": _heads(adapters, tokens[:collect.batch_rows])})["heads"]
        facts = {
            "models": ", ".join(f"{name} ({a.kind}, {a.n_layers} layers x {a.d_mlp} neurons)"
                                for name, a in adapters.items()),
            "tokens streamed": f"{moments.count_:,} ({tokens.shape[0]} rows of {tokens.shape[1]} from "
                               f"{config.data.source}; dropped ids {drop})",
            "unit sets": ", ".join(unit_sets),
            "rotations in the baseline": str(comparison.rotations),
            "passes": plan_fact(comparison),
        }
        tables = table_step(run_dir / "tables", "contexts", moments_print,
                            lambda: context_tables(tokens, _display_texts(first)))
        tables |= {"heads": heads} | ({} if neurons is None else {"neurons": neurons})
        if ioi_task is not None:
            with times("circuits"):
                tables |= pretrained_circuit_step(run_dir, adapters, ioi_task, eval_seed=config.compare.seed,
                                                  models_print=config.models)
        if checkpoints:
            with times("training dynamics"):
                dynamics, dynamics_notes = training_dynamics_step(
                    run_dir / "tables", config.training_dynamics, checkpoints,
                    lambda directories: stream_activations(
                        {name: load_model(directory, device=config.device) for name, directory in directories.items()},
                        tokens, **stream, device=config.device),
                    compare=config.compare, models_print=checkpoints)
            tables |= dynamics
            notes = notes + dynamics_notes
        predicts = all(a.kind == "decoder" and getattr(a, "has_head", True) for a in adapters.values())
        return RunRecord(comparison, {}, facts, tables, notes=notes, top_activations=top, reservoir=reservoir,
                         predictions=next_token(adapters, tokens, collect.batch_rows, moments_print) if predicts else None)
    with torch_threads(threads):
        return execute(config, runs_dir, body)


def token_rows(data: DataConfig, adapter) -> torch.Tensor:
    """Token rows [rows, seq_len] from `data.source`: a .npy array, a `datasets` directory, or text."""
    source = Path(data.source)
    if source.suffix == ".npy":
        return tokens_from_numpy(source, seq_len=data.seq_len, bos_token_id=adapter.bos_token_id,
                                 max_rows=data.rows)
    if source.is_dir():
        return tokens_from_dataset(source, seq_len=data.seq_len, tokenizer=adapter, column=data.column,
                                   max_rows=data.rows)
    if not source.is_file():
        raise UniversalityError(f"data source {data.source!r} does not exist; give a .txt file, a .npy token "
                                "array or a directory saved with datasets' save_to_disk")
    return tokens_from_text_files(source, adapter, seq_len=data.seq_len, max_rows=data.rows)


def _load(config: PretrainedExperimentConfig) -> dict:
    """{short unique name: adapter}, in config order; one tokenizer across models and rows of `seq_len`
    within every model's context (checked, before anything is written)."""
    adapters = {}
    for path in config.models:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).name or path).strip("-") or "model"
        name, k = base, 2
        while name in adapters:
            name, k = f"{base}-{k}", k + 1
        adapters[name] = load_model(path, device=config.device)
        if config.data.seq_len > adapters[name].n_ctx:
            raise UniversalityError(f"model {short_repr(path)} has a context of {adapters[name].n_ctx} positions, "
                                    f"shorter than [data] seq_len = {config.data.seq_len}; set seq_len to at most "
                                    f"{adapters[name].n_ctx}")
    check_same_tokenizer(adapters)
    return adapters


def _vocabulary(adapter) -> list[str] | None:
    """Each token id's text (the tokenizer's token strings), or None without a tokenizer."""
    if adapter.tokenizer is None:
        return None
    return [str(t) for t in adapter.tokenizer.convert_ids_to_tokens(list(range(adapter.vocab_size)))]


def _display_texts(adapter) -> list[str] | None:
    """Each token id as it reads in running text (the tokenizer's decoding, spaces included), for the
    contexts on unit pages; None without a tokenizer."""
    if adapter.tokenizer is None:
        return None
    return [adapter.tokenizer.decode([token]) for token in range(adapter.vocab_size)]


def _features(adapter, seq_len: int) -> list:
    """Token features whose variance reduction names a neuron's family: unigram, previous token,
    position buckets 0, 1, 2, 4, ... and, with a tokenizer, token strings and alphabet."""
    vocab = _vocabulary(adapter)
    edges = [0] + [2 ** k for k in range(int(math.log2(max(seq_len - 1, 1))) + 1)]
    features = [unigram(vocab, size=None if vocab else adapter.vocab_size),
                previous_token(vocab, size=None if vocab else adapter.vocab_size), position_buckets(edges)]
    return features + ([token_strings(vocab), alphabet(vocab)] if vocab else [])


def _heads(adapters: dict, tokens: torch.Tensor):
    """Per head of every model: previous-token, BOS-sink, positional and induction scores on one
    batch of rows [batch, pos], and its best-matching head in the first model (pattern correlation,
    max and one-to-one), so a circuit present in every model shows up as matched heads."""
    import pandas as pd
    names = list(adapters)
    patterns = {name: adapters[name].attention_patterns(tokens) for name in names}  # [layers, batch, heads, q, k]
    frames = []
    for name in names:
        scores = head_scores(adapters[name], tokens).assign(model=name)
        if name != names[0]:
            matches = match_heads(patterns[name], patterns[names[0]])
            scores = scores.merge(matches.rename(columns=lambda c: c if c in ("layer", "head") else f"{c}_in_first"),
                                  on=["layer", "head"])
        frames.append(scores)
    return pd.concat(frames, ignore_index=True)
