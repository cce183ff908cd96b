"""The algorithm step of a group run on C_n (Zhong et al. 2023, `universality.algorithms`): for every
transformer seed, clock or pizza, read from the gradient symmetricity and distance irrelevance of each of
its circles (key frequencies) alone and of the whole model; and per attention rate the fraction of
generalised seeds that are clock, pizza or mixed.
A run listing transformers of several attention rates (`model = [...]`) is the paper's sweep: the case
where seeds are not universal at the algorithm level, beside the irreps where they are.

- `algorithms`, one row per transformer seed: model, attention_rate, the keys of `diagnose` (whole model:
  gradient_symmetricity, distance_irrelevance, whole_model_algorithm; per circle, space-separated in
  circle order: key_frequencies, circle_gradient_symmetricity, circle_distance_irrelevance (3 decimals),
  circle_algorithms; the seed's algorithm from its circles), test_accuracy;
- `algorithm_fractions`, one row per attention rate: attention_rate, seeds, generalised, clock, pizza, mixed
  (by the circles), whole_model_clock, whole_model_pizza, whole_model_mixed (by the whole model).
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
        for name in ("key_frequencies", "circle_algorithms"):
            table[name] = table[name].map(lambda values: " ".join(str(value) for value in values))
        for name in ("circle_gradient_symmetricity", "circle_distance_irrelevance"):
            table[name] = table[name].map(lambda values: " ".join(f"{value:.3f}" for value in values))
        by_circles = algorithm_fractions(table, min_test_accuracy=generalised_accuracy)
        whole = algorithm_fractions(table, min_test_accuracy=generalised_accuracy, column="whole_model_algorithm")
        fractions = by_circles.join(whole[["clock", "pizza", "mixed"]].add_prefix("whole_model_")).reset_index()
        return {"algorithms": table, "algorithm_fractions": fractions}
    step_print = fingerprint(models={name: prints[name] for name in transformers}, generalised=generalised_accuracy)
    return table_step(run_dir / "tables", "algorithms", step_print, compute)
