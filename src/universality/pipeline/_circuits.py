"""The circuit step of a language run whose seeds were trained with the indirect-object task
(`train.ioi_fraction` > 0): per seed the task's accuracy and logit difference, every head's and MLP's
attribution to the logit difference (attribution patching, three passes), the heads' roles, and each
role's heads matched across seeds (`circuits.circuits_table`).

| table                      | one row per            | columns                                                   |
|----------------------------|------------------------|-----------------------------------------------------------|
| `ioi`                      | seed                   | seed, accuracy, name_accuracy, logit_diff, logit_diff_corrupt |
| `circuit_attribution`      | (seed, component)      | seed, component (head / mlp), layer, head, attribution     |
| `circuits`                 | (seed, role, head)     | `circuits.CIRCUIT_COLUMNS`                                 |
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._rundir import fingerprint
from ..circuits import attribution_patching, circuits_table
from ..tasks import IOITask, ioi_metrics, logit_difference
from ._steps import table_step

__all__ = ["circuit_step", "IOI_PROMPTS"]

IOI_PROMPTS = 128  # evaluation prompts, drawn with the run's evaluation seed


def circuit_step(run_dir: Path, train_config, language, adapters: dict, seeds: list[int], *, eval_seed: int,
                 models_print: str) -> dict[str, pd.DataFrame]:
    """The three tables (module docstring), or {} when the seeds were not trained on the task."""
    if train_config.ioi_fraction == 0:
        return {}
    step_print = fingerprint(models=models_print, ioi=train_config.ioi.model_dump(), prompts=IOI_PROMPTS,
                             seed=eval_seed)

    def compute() -> dict[str, pd.DataFrame]:
        prompts = IOITask(language, train_config.ioi).prompts(IOI_PROMPTS, seed=eval_seed)
        by_seed = {seed: adapters[f"seed-{seed}"] for seed in seeds}
        scores, attribution = [], []
        for seed, adapter in by_seed.items():
            scores.append({"seed": seed, **ioi_metrics(adapter, prompts)})
            table = attribution_patching(adapter, prompts.clean, prompts.corrupt,
                                         lambda logits: logit_difference(logits, prompts))
            attribution.append(table.assign(seed=seed))
        attribution = pd.concat(attribution, ignore_index=True)
        return {"ioi": pd.DataFrame(scores), "circuits": circuits_table(by_seed, prompts, seed=eval_seed),
                "circuit_attribution": attribution[["seed", *[c for c in attribution if c != "seed"]]]}
    return table_step(run_dir / "tables", "circuits", step_print, compute)
