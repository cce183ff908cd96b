"""The circuit step: per model the indirect-object task's accuracy and logit difference, every head's and MLP's
attribution to the logit difference (attribution patching, three passes), the heads' roles, and each role's
heads matched across models (`circuits.circuits_table`). A language run makes it when its seeds were trained
with the task (`train.ioi_fraction` > 0), on prompts of the synthetic language (`tasks.IOITask`); a pretrained
run with `circuits = true`, on English prompts built with the models' tokenizer (`tasks.TextIOITask`), the
models numbered 0, 1, ... in config order as the `seed` column and named in a `model` column.

| table                 | one row per        | columns                                                                |
|-----------------------|--------------------|------------------------------------------------------------------------|
| `ioi`                 | seed               | seed, accuracy, name_accuracy, logit_diff, logit_diff_corrupt,         |
|                       |                    | attribution_spearman                                                   |
| `circuit_attribution` | (seed, component)  | seed, component (head / mlp), layer, head, attribution, effect         |
| `circuits`            | (seed, role, head) | `circuits.CIRCUIT_COLUMNS`                                             |

Attribution patching is a first-order estimate, so each seed checks it against activation patching (one
forward per component) on a subset: the `CHECKED_HEADS` heads of largest |attribution|, as many other heads
drawn with the run's seed, and every MLP layer. `effect` holds their patched change of the logit difference
(NaN for heads not patched); `attribution_spearman` the rank correlation of the two over that subset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .._rundir import fingerprint, seed_name
from ..circuits import activation_patching, attribution_patching, circuits_table, rank_correlation
from ..circuits._patching import check_components
from ..errors import UniversalityError
from ..tasks import IOIPrompts, IOITask, TextIOITask, ioi_metrics, logit_difference
from ._steps import table_step

__all__ = ["circuit_step", "text_ioi_task", "pretrained_circuit_step", "IOI_PROMPTS"]

IOI_PROMPTS = 128  # evaluation prompts, drawn with the run's evaluation seed
CHECKED_HEADS = 8  # heads of largest |attribution| checked by activation patching, beside as many drawn at random


def _ioi_tables(by_seed: dict[int, object], prompts: IOIPrompts, *, seed: int) -> dict[str, pd.DataFrame]:
    """The three tables (module docstring) of models {seed: adapter} on `prompts`."""
    scores, attribution = [], []

    def metric(logits):  # [batch, pos, vocab] -> [batch]
        return logit_difference(logits, prompts)
    for model_seed, adapter in by_seed.items():
        table = attribution_patching(adapter, prompts.clean, prompts.corrupt, metric)
        effect = activation_patching(adapter, prompts.clean, prompts.corrupt, metric,
                                     heads=_checked_heads(table, seed=seed))
        scores.append({"seed": model_seed, **ioi_metrics(adapter, prompts),
                       "attribution_spearman": rank_correlation(table, effect, component=None)})
        table = table.merge(effect, on=["component", "layer", "head"], how="left")
        attribution.append(table.assign(seed=model_seed))
    attribution = pd.concat(attribution, ignore_index=True)
    return {"ioi": pd.DataFrame(scores), "circuits": circuits_table(by_seed, prompts, seed=seed),
            "circuit_attribution": attribution[["seed", *[c for c in attribution if c != "seed"]]]}


def _checked_heads(attribution: pd.DataFrame, *, seed: int) -> list[tuple[int, int]]:
    """[(layer, head)]: the `CHECKED_HEADS` heads of largest |attribution| and as many others drawn with `seed`
    (every head when there are no more than twice that many), in layer-major order."""
    heads = attribution[attribution["component"] == "head"].reset_index(drop=True)
    order = np.argsort(-heads["attribution"].abs().to_numpy(), kind="stable")
    top, rest = order[:CHECKED_HEADS], order[CHECKED_HEADS:]
    drawn = np.random.default_rng(seed).choice(rest, size=min(CHECKED_HEADS, len(rest)), replace=False)
    picked = heads.iloc[np.sort(np.concatenate([top, drawn]))]
    return list(zip(picked["layer"].astype(int), picked["head"].astype(int)))


def circuit_step(run_dir: Path, train_config, language, adapters: dict, seeds: list[int], *, eval_seed: int,
                 models_print: str) -> dict[str, pd.DataFrame]:
    """The three tables of a language run's seeds, or {} when they were not trained on the task."""
    if train_config.ioi_fraction == 0:
        return {}
    step_print = fingerprint(models=models_print, ioi=train_config.ioi.model_dump(), prompts=IOI_PROMPTS,
                             checked_heads=CHECKED_HEADS, seed=eval_seed)

    def compute() -> dict[str, pd.DataFrame]:
        prompts = IOITask(language, train_config.ioi).prompts(IOI_PROMPTS, seed=eval_seed)
        return _ioi_tables({seed: adapters[seed_name(seed)] for seed in seeds}, prompts, seed=eval_seed)
    return table_step(run_dir / "tables", "circuits", step_print, compute)


def text_ioi_task(adapters: dict) -> TextIOITask:
    """English IOI prompts for loaded models {name: adapter} that share one tokenizer, after checking each is
    a decoder with per-head sites and a language-model head (one-line errors, before any pass)."""
    first = next(iter(adapters.values()))
    for adapter in adapters.values():
        check_components(adapter)
        if not getattr(adapter, "has_head", True):
            raise UniversalityError(f"circuits = true: {adapter.name} has no language-model head (its checkpoint "
                                    "holds the base model only); load checkpoints with their LM head")
    return TextIOITask(first.require_tokenizer(), bos_token_id=first.bos_token_id)


def pretrained_circuit_step(run_dir: Path, adapters: dict, task: TextIOITask, *, eval_seed: int,
                            models_print) -> dict[str, pd.DataFrame]:
    """The three tables of loaded models {name: adapter} (numbered in order), each with a `model` column."""
    step_print = fingerprint(models=models_print, templates=task.templates_, names=task.name_texts_,
                             bos=task.bos_token_id, prompts=IOI_PROMPTS, checked_heads=CHECKED_HEADS, seed=eval_seed)
    names = list(adapters)

    def compute() -> dict[str, pd.DataFrame]:
        prompts = task.prompts(IOI_PROMPTS, seed=eval_seed)
        tables = _ioi_tables(dict(enumerate(adapters.values())), prompts, seed=eval_seed)
        return {key: frame.assign(model=[names[s] for s in frame["seed"]]) for key, frame in tables.items()}
    return table_step(run_dir / "tables", "circuits", step_print, compute)
