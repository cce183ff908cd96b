"""The algorithm step of a group run on C_n (Zhong et al. 2023, `universality.algorithms`): for every
transformer seed, clock or pizza, read from its gradient symmetricity and distance irrelevance, with its
key frequencies; and per attention rate the fraction of generalised seeds that are clock, pizza or mixed.
A run listing transformers of several attention rates (`model = [...]`) is the paper's sweep: the case
where seeds are not universal at the algorithm level, beside the irreps where they are.

- `algorithms`, one row per transformer seed: model, attention_rate, gradient_symmetricity,
  distance_irrelevance, key_frequencies (space-separated), algorithm, test_accuracy;
- `algorithm_fractions`, one row per attention rate: attention_rate, seeds, generalised, clock, pizza, mixed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._rundir import fingerprint
from ..algorithms import algorithm_fractions, cyclic_order, diagnose
from ..errors import UniversalityError
from ._steps import table_step

__all__ = ["algorithm_step"]


def algorithm_step(run_dir: Path, task, trained: dict, prints: dict, *, generalised_accuracy: float
                   ) -> dict[str, pd.DataFrame]:
    """The two tables, or {} when the group is not cyclic (C_n with elements 0..n-1) or no seed is a
    transformer. `generalised_accuracy`: seeds below it are left out of the fractions (never generalised)."""
    group = task.group
    transformers = {name: t for name, t in trained.items() if t.model_config.arch == "transformer"}
    try:
        cyclic_order(group)
    except UniversalityError:  # not C_n: no clock, no pizza
        return {}
    if not transformers:
        return {}

    def compute() -> dict[str, pd.DataFrame]:
        rows = [{"model": name, "attention_rate": t.model_config.attention_rate, **diagnose(t.model, group),
                 "test_accuracy": t.curve[-1]["test_acc"]} for name, t in transformers.items()]
        table = pd.DataFrame(rows)
        table["key_frequencies"] = table.key_frequencies.map(lambda ks: " ".join(str(k) for k in ks))
        fractions = algorithm_fractions(table, min_test_accuracy=generalised_accuracy).reset_index()
        return {"algorithms": table, "algorithm_fractions": fractions}
    step_print = fingerprint(models={name: prints[name] for name in transformers}, generalised=generalised_accuracy)
    return table_step(run_dir / "tables", "algorithms", step_print, compute)
