"""The pretrained-models experiment (`kind = "pretrained"`): existing models (GPT-2 / Pythia seed families, BERT-like encoders),
loaded offline, streamed once over one token stream, compared, and their neurons described.

config -> load models (one tokenizer, checked) -> token rows -> stream unit activations into
moments -> compare -> neuron statistics and families (a second, cheaper pass) -> report.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from pathlib import Path

import torch

from .._rundir import fingerprint, write_parquet_atomic
from ..neurons import alphabet, head_scores, match_heads, neuron_table, position_buckets, previous_token, row_context, token_strings, unigram
from ..collect import batch_count, select_unit_sets, stream_unit_activations
from ..config import DataConfig, PretrainedExperimentConfig
from ..errors import UniversalityError
from ..models import fold_layernorm, load_model
from ..tokens import (check_same_tokenizer, drop_token_ids, keep_mask, tokens_from_dataset, tokens_from_numpy,
                     tokens_from_text_files)
from ._steps import Progress, RunResult, compare_step, open_run_dir, quiet, stream_moments

__all__ = ["run_pretrained", "token_rows"]


def run_pretrained(config: PretrainedExperimentConfig, *, runs_dir: str | Path = "runs",
               on_progress: Progress = quiet) -> RunResult:
    """Run (or resume) the pretrained-models experiment `config` in `runs_dir/<config.name>`."""
    from ..api import render_report
    # 1) every check that needs no activations: models, tokenizers, unit sets, tokens
    adapters = _load(config)
    first = next(iter(adapters.values()))
    unit_sets = select_unit_sets(first.unit_sets, config.collect.unit_sets)
    for name, adapter in adapters.items():
        select_unit_sets(adapter.unit_sets, unit_sets)  # every model has them (one-line error if not)
    tokens = token_rows(config.data, first)  # [rows, seq_len]
    collect = config.collect
    drop = drop_token_ids(first, bos=collect.drop_bos, pad=collect.drop_pad, newline=collect.drop_newline)
    run_dir = open_run_dir(runs_dir, config)
    seconds = {}
    # 2) one pass into moments; compare
    start = time.perf_counter()
    moments_print = fingerprint(models=config.models, tokens=hashlib.sha256(tokens.numpy().tobytes()).hexdigest(),
                                collect=collect.model_dump(), accumulate=config.compare.accumulate)

    def batches(start_batch: int):
        return stream_unit_activations(adapters, tokens, unit_sets=unit_sets, batch_rows=collect.batch_rows,
                                       drop_tokens=drop, start_batch=start_batch, device=config.device)
    moments = stream_moments(config.name, moments_print, run_dir / "moments",
                             batch_count(tokens.shape[0], collect.batch_rows), batches,
                             accumulate=config.compare.accumulate, device=config.device, on_progress=on_progress)
    comparison = compare_step(moments, moments_print, config.compare.model_dump(exclude={"accumulate"}),
                              run_dir, on_progress)
    seconds["moments and compare"] = time.perf_counter() - start
    # 3) neurons: moments, families, weights
    start = time.perf_counter()
    neurons = _neurons(adapters, tokens, drop, comparison.units, collect.batch_rows, on_progress)
    if neurons is not None:
        write_parquet_atomic(run_dir / "tables" / "neurons.parquet", neurons)
    seconds["neurons"] = time.perf_counter() - start
    start = time.perf_counter()
    write_parquet_atomic(run_dir / "tables" / "heads.parquet", _heads(adapters, tokens[:collect.batch_rows]))
    seconds["heads"] = time.perf_counter() - start
    start = time.perf_counter()
    on_progress("write report", 0, 1)
    facts = {
        "models": ", ".join(f"{name} ({a.kind}, {a.n_layers} layers x {a.d_mlp} neurons)" for name, a in adapters.items()),
        "tokens streamed": f"{moments.count_:,} ({tokens.shape[0]} rows of {tokens.shape[1]} from "
                           f"{config.data.source}; dropped ids {drop})",
        "unit sets": ", ".join(unit_sets),
        "rotations in the baseline": str(config.compare.rotations),
        "step times (s)": ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()),
    }
    report = render_report(run_dir, comparison, {}, facts=facts)
    on_progress("write report", 1, 1)
    seconds["report"] = time.perf_counter() - start
    return RunResult(run_dir, comparison, report, seconds)


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
    """{short unique name: adapter}, in config order; one tokenizer across models (checked)."""
    adapters = {}
    for path in config.models:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).name or path).strip("-") or "model"
        name, k = base, 2
        while name in adapters:
            name, k = f"{base}-{k}", k + 1
        adapters[name] = load_model(path, device=config.device)
    check_same_tokenizer(adapters)
    return adapters


def _neurons(adapters: dict, tokens: torch.Tensor, drop: list[int], units, batch_rows: int, on_progress):
    """The neurons table of the compared hook_post sets (`analyze.neuron_table`); None if there are none."""
    post = [s for s in units.unit_set.unique() if s.endswith("mlp.hook_post")]
    if not post:
        return None
    sets = [name for s in post for name in (s.replace("hook_post", "hook_pre"), s)]
    total = batch_count(tokens.shape[0], batch_rows)

    def batches():
        stream = stream_unit_activations(adapters, tokens, unit_sets=sets, batch_rows=batch_rows, drop_tokens=drop)
        for index, batch in enumerate(stream):
            rows = tokens[index * batch_rows:(index + 1) * batch_rows]
            keep = keep_mask(rows, drop).reshape(-1)  # the tokens `batch` kept
            context = {k: v[keep] for k, v in row_context(rows).items() if k != "labels"}
            on_progress("neuron statistics", index + 1, total)
            yield batch, context
    first = next(iter(adapters.values()))
    vocab = first.tokenizer.convert_ids_to_tokens(list(range(first.vocab_size))) if first.tokenizer else None
    vocab = [str(t) for t in vocab] if vocab else None
    edges = [0] + [2 ** k for k in range(int(math.log2(max(tokens.shape[1] - 1, 1))) + 1)]  # 0, 1, 2, 4, ...
    features = [unigram(vocab, size=None if vocab else first.vocab_size),
                previous_token(vocab, size=None if vocab else first.vocab_size), position_buckets(edges)]
    if vocab:
        features += [token_strings(vocab), alphabet(vocab)]
    return neuron_table(batches(), units=units[units.unit_set.isin(post)], feature_sets=features,
                        weights={name: _analysis_weights(a) for name, a in adapters.items()})


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


def _analysis_weights(adapter) -> dict:
    """LayerNorm-folded weights of pre-LN models; post-LN (BERT-style) weights as they are."""
    weights = adapter.weights()
    try:
        return fold_layernorm(weights)
    except UniversalityError:  # post-LN: the residual stream is the LayerNorm output already
        return weights
