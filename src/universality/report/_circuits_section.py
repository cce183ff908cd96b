"""Report section of circuits across seeds (`tables/ioi.parquet`, `circuits.parquet`,
`circuit_attribution.parquet`): each seed's task scores, its heads drawn as a small layer x head grid
coloured by role side by side, and how often a role's head is matched to a head of the same role."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._html import ReportSection
from ._plots import _figure, _png

__all__ = ["circuit_sections"]

_COLOURS = {"previous_token": "tab:blue", "duplicate_token": "tab:cyan", "induction": "tab:green",
            "s_inhibition": "tab:orange", "name_mover": "tab:red", "negative_name_mover": "tab:purple"}


def circuit_sections(tables: dict[str, pd.DataFrame]) -> list[ReportSection]:
    """One section; none when the run made no circuit tables."""
    if "ioi" not in tables:
        return []
    circuits, attribution = tables["circuits"], tables["circuit_attribution"]
    recurrence = (circuits.groupby("role")
                  .agg(heads=("head", "size"), seeds_with_role=("seed", "nunique"),
                       mean_same_role_in_other_seeds=("same_role_in_other_seeds", "mean")).reset_index())
    heads = attribution[attribution.component == "head"]
    top = (heads.assign(magnitude=heads["attribution"].abs()).sort_values(["seed", "magnitude"], ascending=[True, False])
           .groupby("seed").head(3).drop(columns="magnitude"))
    pretrained = "model" in tables["ioi"]  # loaded models, numbered as seeds in config order
    task = ("Each model read English indirect-object prompts built with its tokenizer (\"When Mary and John went to "
            "the store, John gave a drink to\"; models numbered 0, 1, ... in config order as the seed column)."
            if pretrained else "Each seed trained on the language mixed with indirect-object prompts (two names, a "
            "repeated subject, the other name to predict).")
    return [ReportSection(
        "Circuits across seeds: the indirect-object task",
        text=(task + " Heads are classified by their defining scores; each role's "
              "head is matched one to one to a head of every other seed by attention patterns, and the grid shows "
              "at which layer and head each seed put each role. Attribution patching (gradient x activation "
              "difference, three passes) estimates each head's effect on the logit difference IO - S; activation "
              "patching checks it on the largest 8 and 8 random other heads and every MLP (attribution_spearman, "
              "their rank correlation)."),
        tables=[("Task scores per seed (accuracy: IO is the top token; logit difference IO - S, clean and with the "
                 "subject replaced)", tables["ioi"]),
                ("Roles: how many heads, in how many seeds, and on average how many of a head's matched partners in "
                 "the other seeds hold the same role", recurrence),
                ("The 3 heads with the largest attribution per seed", top),
                ("Every head with a role", circuits)],
        figures=[("circuits.png", "Each seed's heads (rows: layers, columns: heads) coloured by role",
                  _grids(circuits, attribution))])]


def _grids(circuits: pd.DataFrame, attribution: pd.DataFrame) -> bytes:
    """A PNG: one layer x head grid per seed, a cell coloured by the head's first role (grey: none)."""
    from matplotlib.colors import to_rgb  # lazily, as `_figure` imports matplotlib
    heads = attribution[attribution.component == "head"]
    layers, width = int(heads["layer"].max()) + 1, int(heads["head"].max()) + 1
    seeds = sorted(heads.seed.unique())
    fig = _figure(1.2 + 1.6 * len(seeds), 1.0 + 0.45 * layers)
    for index, seed in enumerate(seeds):
        grid = np.full((layers, width, 3), 0.9)
        for row in circuits[circuits.seed == seed].itertuples():
            grid[row.layer, row.head] = to_rgb(_COLOURS.get(row.role, "black"))
        axes = fig.add_subplot(1, len(seeds), index + 1)
        axes.imshow(grid, aspect="equal")
        axes.set_title(f"seed {seed}", fontsize=8)
        axes.set_xticks(range(width), [str(h) for h in range(width)], fontsize=6)
        axes.set_yticks(range(layers), [str(l) for l in range(layers)], fontsize=6)
        axes.set_xlabel("head", fontsize=7)
        axes.set_ylabel("layer", fontsize=7)
    from matplotlib.patches import Patch
    fig.legend(handles=[Patch(color=c, label=r) for r, c in _COLOURS.items()], fontsize=6, loc="outside right")
    return _png(fig)
