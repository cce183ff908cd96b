"""The group-composition experiment (Chughtai, Chan, Nanda 2023): train seeds on a finite group,
find which irreps each learned, and compare their neurons across seeds with the universality step.

config -> group, task, split -> train seeds (of one or several architectures) -> per-seed irrep tables -> stream hidden units over all
pairs into moments -> compare -> matched neurons with their irreps -> report.

Tables written besides the universality ones (`tables/`):

    group_seeds.parquet      per seed: accuracies, losses (full, restricted, excluded), epochs to grok, key irreps
    group_irreps.parquet     per (seed, irrep): logit similarity, key, FVE of embeddings / unembedding / hidden terms
    group_neurons.parquet    per (seed, unit): irrep, share, dead, best coset partition
    group_emergence.parquet  per (seed, irrep): epoch it became key, order
    group_matches.parquet    per (unit, other seed): best partner, correlation, both units' irreps
    group_fourier.parquet    cyclic groups: per (seed, matrix, frequency) share
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from .._rundir import fingerprint, write_parquet_atomic
from ..irreps import analyze_group_seed
from ..config import GroupExperimentConfig
from ..groups import make_group
from ..tasks import word_task
from ..train import build_group_model, load_group_model, save_group_model, train_group_seed
from ._steps import Progress, RunResult, compare_step, open_run_dir, quiet, stream_moments, train_or_load

__all__ = ["run_groups"]

_PAIR_BATCH = 4096  # pairs per streamed batch


def run_groups(config: GroupExperimentConfig, *, runs_dir: str | Path = "runs",
               on_progress: Progress = quiet) -> RunResult:
    """Run (or resume) the group experiment `config` in `runs_dir/<config.name>`."""
    from ..api import render_report
    group = make_group(config.task.group)  # bad names and sizes fail here, before anything is written
    task = word_task(group, config.task.word, config.train.train_fraction, config.task.split_seed)
    hidden_sets = {_hidden(m) for m in config.architectures}
    unit_set = hidden_sets.pop() if len(hidden_sets) == 1 else "hidden"  # the name compared across models
    run_dir = open_run_dir(runs_dir, config)
    seconds = {}
    start = time.perf_counter()
    trained, prints = _train(config, task, run_dir, on_progress)
    seconds["train"] = time.perf_counter() - start

    start = time.perf_counter()
    tables = _analyze(config, task, trained, on_progress) if task.word == "a b" else {}
    tables["group_seeds"] = _seed_table(trained, tables.pop("summaries", {}))
    seconds["irreps"] = time.perf_counter() - start

    start = time.perf_counter()
    models = {name: t.model for name, t in trained.items()}
    moments_print = fingerprint(models=prints, unit_set=unit_set, accumulate=config.compare.accumulate)
    pairs = task.left.shape[0]

    def batches(start_batch: int):
        from ..collect import capture
        for first in range(start_batch * _PAIR_BATCH, pairs, _PAIR_BATCH):
            rows = slice(first, first + _PAIR_BATCH)
            batch = {}
            for name, model in models.items():
                hook = _hidden(trained[name].model_config)
                with capture(model, [hook]) as cache:
                    model(task.left[rows], task.right[rows])
                batch[name] = {unit_set: cache[hook]}  # [pairs in batch, units]
            yield batch
    moments = stream_moments(config.name, moments_print, run_dir / "moments", -(-pairs // _PAIR_BATCH),
                             batches, accumulate=config.compare.accumulate, device="cpu",
                             on_progress=on_progress)
    comparison = compare_step(moments, moments_print, config.compare.model_dump(exclude={"accumulate"}),
                              run_dir, on_progress)
    if "group_neurons" in tables:
        tables["group_matches"] = _matches(comparison.pairs, tables["group_neurons"])
    seconds["compare"] = time.perf_counter() - start

    start = time.perf_counter()
    on_progress("write report", 0, 1)
    for name, table in tables.items():
        write_parquet_atomic(run_dir / "tables" / f"{name}.parquet", table)
    curves = {name: pd.DataFrame(t.curve).rename(columns={"epoch": "step", "train_loss": "loss"})
              for name, t in trained.items()}
    facts = {
        "task": f"{group.name} (order {group.order}), word '{task.word}', train fraction "
                f"{config.train.train_fraction}, {pairs:,} pairs",
        "models": "; ".join(f"{len(config.seeds)} seeds of the paper's {m.arch} "
                            f"({', '.join(f'{k} {v}' for k, v in m.model_dump(exclude={'arch'}).items())})"
                            for m in config.architectures),
        "unit set compared": unit_set,
        "step times (s)": ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()),
    }
    report = render_report(run_dir, comparison, curves, facts=facts)  # sections from the tables just written
    on_progress("write report", 1, 1)
    seconds["report"] = time.perf_counter() - start
    return RunResult(run_dir, comparison, report, seconds)


def _train(config: GroupExperimentConfig, task, run_dir: Path, on_progress: Progress):
    """Train every seed of every architecture, or load it when its checkpoint was made from the same
    inputs. Seeds are named seed-<k>, or <arch>-seed-<k> when the run has several architectures."""
    trained, prints = {}, {}
    architectures = config.architectures
    for index, model_config in enumerate(architectures):
        def train(seed, directory, print_, report, model_config=model_config):
            result = train_group_seed(task, model_config, config.train, seed,
                                      on_log=lambda point: report(point["epoch"]))
            save_group_model(directory, result, task, extra={"fingerprint": print_})
            return result
        inputs = dict(task=config.task.model_dump(), model=model_config.model_dump(), train=config.train.model_dump())
        same_arch = sum(m.arch == model_config.arch for m in architectures) > 1
        prefix = "" if len(architectures) == 1 else f"{model_config.arch}{index if same_arch else ''}-"
        found, found_prints = train_or_load(config.seeds, run_dir, inputs, load=lambda d: load_group_model(d)[0],
                                            train=train, total=config.train.epochs, on_progress=on_progress,
                                            prefix=prefix)
        trained.update(found)
        prints.update(found_prints)
    return trained, prints


def _hidden(model_config) -> str:
    """The hidden ReLU layer's unit set of an architecture."""
    return "mlp.hook_post" if model_config.arch == "mlp" else "blocks.0.mlp.hook_post"


def _analyze(config: GroupExperimentConfig, task, trained: dict, on_progress: Progress) -> dict:
    """Per-seed irrep tables, concatenated with a `model` column (see `analyze_group_seed`)."""
    parts: dict[str, list[pd.DataFrame]] = {"group_irreps": [], "group_neurons": [], "group_emergence": [],
                                             "group_fourier": []}
    summaries = {}
    for done, (name, seed_model) in enumerate(trained.items()):
        on_progress("irreps per seed", done, len(trained))
        checkpoint_models = {}
        for epoch, state in seed_model.checkpoints.items():
            model = build_group_model(seed_model.model_config, task.group.order, seed_model.seed)
            model.load_state_dict(state)
            checkpoint_models[epoch] = model
        result = analyze_group_seed(task, seed_model.model, unit_set=_hidden(seed_model.model_config),
                                    key_threshold=config.analysis.key_threshold,
                                    unit_threshold=config.analysis.neuron_threshold,
                                    checkpoint_models=checkpoint_models)
        for key, frame in result.items():
            if key == "summary":
                summaries[name] = frame
            elif len(frame):
                parts[f"group_{key}"].append(frame.assign(model=name))
    on_progress("irreps per seed", len(trained), len(trained))
    tables = {key: _model_first(pd.concat(frames, ignore_index=True)) for key, frames in parts.items() if frames}
    tables["summaries"] = summaries
    return tables


def _seed_table(trained: dict, summaries: dict) -> pd.DataFrame:
    """One row per seed: training outcome and, for composition tasks, the irrep summary."""
    rows = []
    for name, seed_model in trained.items():
        last = seed_model.curve[-1]
        rows.append({"model": name, "seed": seed_model.seed, "epochs": last["epoch"],
                     "epochs_to_grok": seed_model.epochs_to_grok, "grokked": seed_model.epochs_to_grok is not None,
                     "final_train_acc": last["train_acc"], "final_test_acc": last["test_acc"],
                     "train_seconds": round(seed_model.seconds, 1), **summaries.get(name, {})})
    return pd.DataFrame(rows)


def _matches(pairs: pd.DataFrame, neurons: pd.DataFrame) -> pd.DataFrame:
    """Each unit's best partner in every other seed, with both units' irreps (is a matched pair of
    neurons built on the same irrep?)."""
    irrep = neurons.set_index(["model", "unit"]).irrep
    matched = pairs[["model", "unit", "other_model", "partner_unit", "max_corr", "baseline_max_corr"]].copy()
    matched["irrep"] = [irrep.get(key) for key in zip(matched.model, matched.unit)]
    matched["partner_irrep"] = [irrep.get(key) for key in zip(matched.other_model, matched.partner_unit)]
    matched["same_irrep"] = matched.irrep.notna() & (matched.irrep == matched.partner_irrep)
    return matched


def _model_first(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["model", *[c for c in frame.columns if c != "model"]]]
