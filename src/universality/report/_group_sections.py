"""Report sections of a group-composition run: which irreps each seed learned, when, whether neurons
matched across seeds share an irrep, and which irreps the seeds share as subspaces (tables from
`pipeline/_groups.py`)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from ._headline import ungeneralised
from ._html import ReportSection

__all__ = ["group_sections"]

_SEED_COLUMNS = ["model", "epochs_to_grok", "final_test_acc", "key_irreps", "fraction_logits_explained",
                 "loss", "restricted_loss", "excluded_loss", "train_seconds"]


def group_sections(tables: dict[str, pd.DataFrame], *, key_threshold: float,
                   curves: dict[str, pd.DataFrame] | None = None, generalised_accuracy: float = 0.99,
                   include_ungeneralised: bool = False) -> list[ReportSection]:
    """Sections for the tables present: seeds, irreps across seeds, emergence order, matched neurons, irrep
    subspaces shared by each pair of seeds.

    Seeds whose final test accuracy is below `generalised_accuracy` never generalised: they are flagged in
    the seeds table and left out of the irrep, learning-order and matching claims unless
    `include_ungeneralised`. Epochs print as integers (missing: blank).
    """
    seeds = tables["group_seeds"].copy()
    flagged = ungeneralised(seeds, generalised_accuracy)
    seeds.insert(1, "generalised", ~seeds["model"].isin(flagged))
    if "epochs_to_grok" in seeds:  # None for seeds that never grokked makes the column float: print integers
        seeds["epochs_to_grok"] = seeds["epochs_to_grok"].astype("Float64").round().astype("Int64")
    excluded = set() if include_ungeneralised else set(flagged)
    tables = {name: _without(table, excluded) for name, table in tables.items()}
    left_out = (f" Left out of the sections below, as never generalised (test accuracy < {generalised_accuracy:g}): "
                f"{', '.join(sorted(excluded))}." if excluded else "")
    sections = [ReportSection(
        "Seeds: grokking and key irreps",
        text=(f"A key irrep has logit similarity above {key_threshold:g} (the paper's cut; random logits score "
              "about |G|^-1.5, so judge small groups by the similarity values). Restricted loss keeps only the "
              "key irreps' rho(ab) part of the hidden layer (all pairs); excluded loss removes it (train pairs). "
              "Irrep analysis is meaningful only for seeds that generalised (epochs_to_grok set)." + left_out),
        tables=[("per seed", seeds[[c for c in ["model", "generalised", *_SEED_COLUMNS[1:]] if c in seeds]])],
        figures=[("group_accuracy.png", "Train (dashed) and test accuracy per seed", _accuracy_png(curves))]
        if curves else [],
    )]
    if "group_irreps" in tables:
        irreps = tables["group_irreps"]
        fve = [c for c in irreps.columns if c.startswith(("fve_", "hidden_"))]
        across = irreps.groupby(["irrep", "dim"], sort=False).agg(
            seeds_key=("key", "sum"), mean_similarity=("similarity", "mean"),
            **{f"mean_{c}": (c, "mean") for c in fve}).reset_index()
        sections.append(ReportSection(
            "Irreps across seeds",
            text="How often each irrep is key, and the mean share of each weight matrix and hidden term it holds.",
            tables=[("per irrep", across)],
            figures=[("group_similarity.png", "Logit similarity per seed and irrep (key irreps outlined)",
                      _similarity_png(irreps, key_threshold))]))
    if "group_emergence" in tables:
        emergence = tables["group_emergence"]
        order = emergence.pivot_table(index="model", columns="irrep", values="epoch", aggfunc="first")
        order = order.astype("Float64").round().astype("Int64")  # epochs are integers; NaN (never key) stays blank
        sections.append(ReportSection(
            "Learning order",
            text=("Epoch at which each irrep that is key at the end emerged, by the run's analysis.emergence_rule "
                  "(default first_crossing: the first checkpoint whose logit similarity exceeds "
                  "analysis.emergence_threshold, 0.05, as the authors' learning-order script; the config is at "
                  "the end of this page). Blank: never key."),
            tables=[("epoch each irrep became key", order.reset_index())]))
    if "group_matches" in tables:
        matches = tables["group_matches"]
        assigned = matches[matches.irrep.notna() & matches.partner_irrep.notna()]
        by_irrep = assigned.groupby("irrep").agg(matched_pairs=("same_irrep", "size"),
                                                 same_irrep=("same_irrep", "mean"),
                                                 median_corr=("max_corr", "median")).reset_index()
        sections.append(ReportSection(
            "Neurons matched across seeds",
            text=(f"Each neuron's best-correlated neuron in every other seed: {assigned.same_irrep.mean():.1%} of "
                  f"{len(assigned):,} matched pairs with both irreps assigned use the same irrep."
                  if len(assigned) else "No matched pair has both neurons' irreps assigned."),
            tables=[("per irrep of the neuron", by_irrep)]))
    if "group_irrep_similarity" in tables and len(tables["group_irrep_similarity"]):
        shared = tables["group_irrep_similarity"]
        grid = shared.assign(pair=shared.seed_a + " / " + shared.seed_b).pivot_table(
            index="pair", columns="irrep", values="mean_canonical_corr", sort=False, dropna=False)
        sections.append(ReportSection(
            "Irrep subspaces shared across seeds",
            text=("Beside single neurons: per pair of seeds and irrep rho, the canonical correlations of the two "
                  "hidden layers through rho's rho(ab) block (the functions of a b in rho's block), as many "
                  "averaged as the block has dimensions (dim^2 for a real irrep): 1 when both layers contain the "
                  "whole block, near 0 when either lacks it (chance rises with units / pairs: two untrained S4 "
                  "MLPs of 64 units score about 0.05). Seeds with no universal neuron can still share an irrep "
                  "here. group_irrep_similarity.parquet adds the block's part of the layers' linear CKA."),
            tables=[("mean canonical correlation through each irrep's rho(ab) block", grid.reset_index())]))
    return sections


def _without(table: pd.DataFrame, models: set[str]) -> pd.DataFrame:
    """Rows of `table` whose model (and other model, or seeds a and b, when it has them) is not in `models`."""
    keep = pd.Series(True, index=table.index)
    for column in ("model", "other_model", "seed_a", "seed_b"):
        if column in table:
            keep &= ~table[column].isin(models)
    return table[keep]


def _similarity_png(irreps: pd.DataFrame, key_threshold: float) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    grid = irreps.pivot_table(index="model", columns="irrep", values="similarity", sort=False)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * grid.shape[1], 0.8 + 0.4 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy(), cmap="viridis", vmin=0, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right")
    ax.set_yticks(range(grid.shape[0]), grid.index)
    for (row, column), value in np.ndenumerate(grid.to_numpy()):
        if value > key_threshold:
            ax.add_patch(plt.Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="#dd8452", lw=2))
    fig.colorbar(image, ax=ax, label="logit similarity")
    return _png(fig)


def _accuracy_png(curves: dict[str, pd.DataFrame]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for index, (name, curve) in enumerate(curves.items()):
        color = f"C{index % 10}"
        steps = curve["step"].clip(lower=1)
        ax.plot(steps, curve["train_acc"], "--", color=color, lw=1)
        ax.plot(steps, curve["test_acc"], color=color, lw=1.5, label=name)
    ax.set(xscale="log", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return _png(fig)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
