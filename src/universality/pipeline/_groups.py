"""The group-composition experiment (Chughtai, Chan, Nanda 2023): train seeds on a finite group,
find which irreps each learned, and compare their neurons across seeds with the universality step.

config -> group, task, split -> train seeds (of one or several architectures) -> per-seed irrep
tables -> stream hidden units over all pairs (`GroupAdapter`: a pair is one token) into moments
-> compare -> matched units with their irreps -> report.

Tables written besides the universality ones (`tables/`):

    group_seeds.parquet      per seed: accuracies, losses (full, restricted, excluded), epochs to grok, key irreps
    group_irreps.parquet     per (seed, irrep): logit similarity, key, FVE of embeddings / unembedding / hidden terms
    group_units.parquet      per (seed, unit): irrep, share, dead, best coset partition
    group_emergence.parquet  per (seed, irrep): epoch it became key, order
    group_matches.parquet    per (unit, other seed): best partner, correlation, both units' irreps
    group_irrep_similarity.parquet  per (seed pair, irrep): the hidden layers' canonical correlation and CKA
                             through the irrep's rho(ab) block (`irrep_similarity`): irreps shared as subspaces
    group_fourier.parquet    cyclic groups: per (seed, matrix, frequency) share
    training_*.parquet       with [training_dynamics] enabled: universality at each kept checkpoint
                             (`_training_dynamics`)
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd
import torch

from .._defaults import SIMILARITY_RIDGE
from .._threads import resolve_threads, torch_threads
from .._rundir import fingerprint
from ..collect import batch_count, stream_activations, stream_layout
from ..config import GroupExperimentConfig
from ..distributed import ActivationSource, trained_models
from ..groups import make_group
from ..irreps import analyze_group_seed, irrep_similarity
from ..irreps._group_seed import run_on_pairs
from ..models import adapt
from ..similarity import Reservoir
from ..tasks import word_task
from ..train import build_group_model, checkpoint_epochs, load_group_model, save_group_model, train_group_seed
from ._posterior import Predictions
from ._report import RunRecord, context_tables
from ._run import execute, pinned_threads, trained_inputs
from ._similarity import reservoir_rows
from ._planned import plan_fact, stream_and_compare
from ._algorithms import algorithm_step
from ._steering import steering_step
from ._steps import Progress, RunResult, StepTimes, quiet, table_step, train_or_load
from ._training_dynamics import check_dynamics_steps, training_dynamics_step

__all__ = ["run_groups"]

_PAIR_BATCH = 4096  # pairs per streamed batch


def run_groups(config: GroupExperimentConfig, *, runs_dir: str | Path = "runs",
               on_progress: Progress = quiet) -> RunResult:
    """Run (or resume) the group experiment `config` in `runs_dir/<config.name>`."""
    group = make_group(config.task.group)  # bad names and sizes fail here, before anything is written
    task = word_task(group, config.task.word, config.train.train_fraction, config.task.split_seed)
    pairs = task.left.shape[0]
    kept_rows = reservoir_rows(config.similarity, pairs)  # a pair is one token
    check_dynamics_steps(config.training_dynamics, checkpoint_epochs(config.train.epochs, config.train.checkpoints),
                         unit="epoch")

    def body(run_dir: Path, times: StepTimes) -> RunRecord:
        with times("train"):
            trained, prints = _train(config, task, run_dir, on_progress)
        with times("irreps"):
            def analyze() -> dict[str, pd.DataFrame]:
                tables = _analyze(config, task, trained, on_progress) if task.word == "a b" else {}
                tables["group_seeds"] = _seed_table(trained, tables.pop("summaries", {}))
                return tables
            tables = table_step(run_dir / "tables", "groups",
                                fingerprint(models=prints, analysis=config.analysis.model_dump()), analyze)
        if task.word == "a b":
            with times("subspaces"):
                tables |= table_step(run_dir / "tables", "group_irrep_similarity",
                                     fingerprint(models=prints, ridge=SIMILARITY_RIDGE),
                                     lambda: {"group_irrep_similarity": _irrep_similarity(task, trained)})
            with times("algorithms"):
                tables |= algorithm_step(run_dir, task, trained, prints,
                                         generalised_accuracy=config.claims.generalised_accuracy)
            with times("steering"):
                steered, steering_notes = steering_step(run_dir, config.steering, task, trained, prints)
                tables |= steered
        with times("compare"):
            adapters = {name: adapt(t.model, name=name) for name, t in trained.items()}
            hidden = {name: [_hidden(t.model_config)] for name, t in trained.items()}  # one unit set per model
            moments_print = fingerprint(models=prints, hidden=hidden, accumulate=config.compare.accumulate,
                                        top_k=config.compare.top_k)
            pair_tokens = torch.arange(pairs).reshape(-1, 1)  # [pairs, 1]: pair index a * |G| + b as one token

            layout, batch_tokens = stream_layout(adapters, pair_tokens, unit_sets=hidden, batch_rows=_PAIR_BATCH)

            def batches(start_batch: int):
                return stream_activations(adapters, pair_tokens, unit_sets=hidden, batch_rows=_PAIR_BATCH,
                                          start_batch=start_batch, token_index=True)
            comparison, top, reservoir = stream_and_compare(config.name, moments_print, run_dir, batch_count(pairs, _PAIR_BATCH),
                                                 batches, layout=layout, batch_tokens=batch_tokens,
                                                 compare=config.compare, scale=config.scale, calibration=config.calibration, device="cpu",
                                                 on_progress=on_progress, factory=ActivationSource(
                                                     partial(trained_models, {n: t.model for n, t in trained.items()}),
                                                     pair_tokens, hidden, _PAIR_BATCH),
                                                 reservoir=None if kept_rows is None else Reservoir(
                                                     layout, kept_rows, seed=config.similarity.seed))
            if "group_units" in tables:
                tables |= table_step(run_dir / "tables", "group_matches",
                                     fingerprint(models=prints, analysis=config.analysis.model_dump(),
                                                 compare=config.compare.model_dump()),
                                     lambda: {"group_matches": _matches(comparison.pairs, tables["group_units"])})
        notes = steering_notes if task.word == "a b" else []
        if config.training_dynamics.enabled:
            with times("training dynamics"):
                dynamics, notes = training_dynamics_step(
                    run_dir / "tables", config.training_dynamics,
                    {name: _checkpoint_models(t, task.group.order) for name, t in trained.items()},
                    lambda models: stream_activations({n: adapt(m, name=n) for n, m in models.items()}, pair_tokens,
                                                      unit_sets=hidden, batch_rows=_PAIR_BATCH),
                    compare=config.compare, models_print=prints)
            tables |= dynamics
        curves = {name: pd.DataFrame(t.curve).rename(columns={"epoch": "step", "train_loss": "loss"})
                  for name, t in trained.items()}
        facts = {
            "task": f"{group.name} (order {group.order}), word '{task.word}', train fraction "
                    f"{config.train.train_fraction}, {pairs:,} pairs",
            "models": "; ".join(f"{len(config.seeds)} seeds of the paper's {m.arch} "
                                f"({', '.join(f'{k} {v}' for k, v in m.model_dump(exclude={'arch'}).items())})"
                                for m in config.architectures),
            "unit sets compared": ", ".join(sorted({s for names in hidden.values() for s in names})),
            "rotations in the baseline": str(comparison.rotations),
            "passes": plan_fact(comparison),
        }
        tables |= table_step(run_dir / "tables", "contexts", moments_print,
                             lambda: context_tables(pair_tokens, _pair_texts(group)))
        claims = config.claims
        flagged = tables["group_seeds"].query(f"final_test_acc < {claims.generalised_accuracy}")
        notes += [f"{row.model} never generalised (final test accuracy {row.final_test_acc:.3f} < "
                 f"{claims.generalised_accuracy}): " + ("kept in the claims, as asked" if claims.include_ungeneralised
                                                       else "left out of the irrep and universality claims")
                 for row in flagged.itertuples()]
        return RunRecord(comparison, curves, facts, tables, key_threshold=config.analysis.key_threshold,
                         generalised_accuracy=claims.generalised_accuracy,
                         include_ungeneralised=claims.include_ungeneralised, notes=notes, top_activations=top,
                         reservoir=reservoir,
                         predictions=Predictions(adapters, pair_tokens, task.target.reshape(-1, 1), _PAIR_BATCH,
                                                 moments_print))  # the product word(a, b) of every pair
    # one thread count for the whole run: a resumed run that loads its seeds instead of training them
    # (training sets the count) would otherwise stream and compare on torch's default, rounding otherwise
    with torch_threads(resolve_threads(config.train.threads)):
        return execute(config, runs_dir, body)


def seed_prefix(architectures: list, index: int) -> str:
    """The prefix of architecture `index`'s seed names: none with one architecture, else "<arch>-" (with
    the index when two share an arch), so the seeds are named seed-<k> or <arch>-seed-<k>."""
    if len(architectures) == 1:
        return ""
    same_arch = sum(m.arch == architectures[index].arch for m in architectures) > 1
    return f"{architectures[index].arch}{index if same_arch else ''}-"


def _train(config: GroupExperimentConfig, task, run_dir: Path, on_progress: Progress):
    """Train every seed of every architecture, or load it when its checkpoint was made from the same
    inputs. Seeds are named seed-<k>, or <arch>-seed-<k> when the run has several architectures."""
    trained, prints = {}, {}
    architectures = config.architectures
    train_config = pinned_threads(config.train)
    for index, model_config in enumerate(architectures):
        def train(seed, directory, print_, report, model_config=model_config):
            result = train_group_seed(task, model_config, train_config, seed,
                                      on_log=lambda point: report(point["epoch"]))
            save_group_model(directory, result, task, extra={"fingerprint": print_})
            return result
        inputs = dict(task=config.task.model_dump(), model=model_config.model_dump(), train=trained_inputs(config.train))
        prefix = seed_prefix(architectures, index)
        found, found_prints = train_or_load(config.seeds, run_dir, inputs, load=lambda d: load_group_model(d)[0],
                                            train=train, total=config.train.epochs, threads=train_config.threads,
                                            on_progress=on_progress,
                                            prefix=prefix)
        trained.update(found)
        prints.update(found_prints)
    return trained, prints


def _pair_texts(group) -> list[str]:
    """The text of each pair token a * |G| + b: "a·b=ab" with the group's element labels."""
    labels, table = group.elements, group.table
    return [f"{labels[a]}·{labels[b]}={labels[table[a][b]]}" for a in range(group.order) for b in range(group.order)]


def _hidden(model_config) -> str:
    """The hidden ReLU layer's unit set of an architecture."""
    return "mlp.hook_post" if model_config.arch == "mlp" else "blocks.0.mlp.hook_post"


def _analyze(config: GroupExperimentConfig, task, trained: dict, on_progress: Progress) -> dict:
    """Per-seed irrep tables, concatenated with a `model` column (see `analyze_group_seed`)."""
    parts: dict[str, list[pd.DataFrame]] = {"group_irreps": [], "group_units": [], "group_emergence": [],
                                             "group_fourier": []}
    summaries = {}
    for done, (name, seed_model) in enumerate(trained.items()):
        on_progress("irreps per seed", done, len(trained))
        result = analyze_group_seed(task, seed_model.model, unit_set=_hidden(seed_model.model_config),
                                    checkpoint_models=_checkpoint_models(seed_model, task.group.order),
                                    **config.analysis.model_dump())
        for key, frame in result.items():
            if key == "summary":
                summaries[name] = frame
            elif len(frame):
                frame = frame.assign(model=name)
                parts[f"group_{key}"].append(frame.assign(unit_set=_hidden(seed_model.model_config))
                                             if key == "units" else frame)
    on_progress("irreps per seed", len(trained), len(trained))
    tables = {key: _model_first(pd.concat(frames, ignore_index=True)) for key, frames in parts.items() if frames}
    tables["summaries"] = summaries
    return tables


def _checkpoint_models(seed_model, order: int) -> dict[int, torch.nn.Module]:
    """{epoch: the seed's model at that checkpoint}, in eval mode."""
    models = {}
    for epoch, state in seed_model.checkpoints.items():
        model = build_group_model(seed_model.model_config, order, seed_model.seed)
        model.load_state_dict(state)
        models[epoch] = model.eval()
    return models


def _irrep_similarity(task, trained: dict) -> pd.DataFrame:
    """Every pair of seeds compared through each irrep's rho(ab) block (`irrep_similarity`), reading one
    seed's hidden layer on all pairs at a time."""
    return irrep_similarity(task.group, ((name, run_on_pairs(t.model, task, _hidden(t.model_config))[1])
                                         for name, t in trained.items()))


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
