"""Report section of steering along learned representations (`tables/steering.parquet`): success rate per
method and seed against the ground-truth irreps rotation, and what transfers across seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._html import ReportSection
from ._plots import _figure, _png

__all__ = ["steering_sections"]


def steering_sections(steering: pd.DataFrame) -> list[ReportSection]:
    """One section; none when the table is empty."""
    if not len(steering):
        return []
    own = steering[steering.transfer_from.astype(str) == ""]
    moved = steering[steering.transfer_from.astype(str) != ""]
    grid = own.pivot_table(index="method", columns="seed", values="success_rate", sort=False)
    tables = [("Success rate (the argmax moves to the requested answer c') per method (rows) and seed (columns), "
               "on the test pairs", grid.reset_index()),
              ("Every method on its own seed: success, probability of c', KL to the clean output when asked to keep "
               "the answer (nats), and distance to the ground truth's states (share of the layer's variance)",
               own.drop(columns="transfer_from"))]
    if len(moved):
        tables.append(("Learned methods fitted on one seed (transfer_from) and applied to another after matching "
                       "its hidden units one to one", moved.groupby(["method"]).agg(
                           pairs=("seed", "size"), success_rate=("success_rate", "mean"),
                           distance_to_ground_truth=("distance_to_ground_truth", "mean")).reset_index()))
    return [ReportSection(
        "Steering along the learned representations",
        text=("Moving a model's answer from c to c' has a known ground truth: the action of rho(c' c^-1) on each key "
              "irrep's block of the hidden pre-activation. Steering vectors (one vector per request or per target) "
              "cannot express a rotation; per-target affine maps and a learned nonlinear f can. A method that "
              "succeeds far from the ground truth found another way to move the argmax."),
        tables=tables, figures=[("steering.png", "Success rate per method, one bar per seed", _bars(own))])]


def _bars(own: pd.DataFrame) -> bytes:
    methods, seeds = list(dict.fromkeys(own.method)), list(dict.fromkeys(own.seed))
    fig = _figure(1.5 + 1.2 * len(methods), 3)
    axes = fig.add_subplot()
    width = 0.8 / max(1, len(seeds))
    for k, seed in enumerate(seeds):
        rows = own[own.seed == seed].set_index("method").reindex(methods)
        axes.bar(np.arange(len(methods)) + k * width, rows.success_rate, width, label=str(seed))
    axes.set_xticks(np.arange(len(methods)) + 0.4 - width / 2, methods, fontsize=8)
    axes.set_ylim(0, 1.02)
    axes.set_ylabel("success rate")
    axes.legend(fontsize=7, title="seed", title_fontsize=7)
    return _png(fig)
