"""The steering step of a group run (`[steering]`, universality.steering): every GroupMLP seed steered
from answer c to c' by the ground-truth irreps rotation and by learned interventions, measured on the
test pairs, learned methods also transferred across seeds (`tables/steering.parquet`). Transformer seeds
are left out with a note: the ground truth is defined at a GroupMLP's mlp.hook_pre."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._rundir import fingerprint
from ..steering import steering_table
from ._steps import table_step

__all__ = ["steering_step"]


def steering_step(run_dir: Path, settings, task, trained: dict, prints: dict
                  ) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """({"steering": table} or {}, notes) for `trained` {name: TrainedGroupModel} on `task` ("a b")."""
    if not settings.enabled:
        return {}, []
    mlps = {name: t.model for name, t in trained.items() if t.model_config.arch == "mlp"}
    notes = [] if len(mlps) == len(trained) else [
        f"steering left out for {len(trained) - len(mlps)} transformer seed(s): its ground truth is defined at a "
        "GroupMLP's mlp.hook_pre"]
    if not mlps:
        return {}, notes
    step_print = fingerprint(models={name: prints[name] for name in mlps}, steering=settings.model_dump())

    def compute() -> dict[str, pd.DataFrame]:
        return {"steering": steering_table(task, mlps, per_pair=settings.per_pair, transfer=settings.transfer,
                                           nonlinear={"steps": settings.nonlinear_steps}, seed=settings.seed)}
    return table_step(run_dir / "tables", "steering", step_print, compute), notes
