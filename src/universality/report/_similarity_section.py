"""Report section of representation similarity (`tables/similarity.parquet`): per layer a seed x seed
score for CKA and Procrustes, and a layer x layer heatmap of each (mean over model pairs)."""

from __future__ import annotations

import pandas as pd

from ._html import ReportSection
from ._plots import _figure, _png

__all__ = ["similarity_sections"]

_SHOWN = ("cka", "procrustes")


def similarity_sections(table: pd.DataFrame) -> list[ReportSection]:
    """One section; none when the table is empty or holds neither CKA nor Procrustes."""
    shown = [m for m in _SHOWN if (table.metric == m).any()] if len(table) else []
    if not shown:
        return []
    tables = []
    for metric in shown:
        rows = table[(table.metric == metric) & (table.unit_set_a == table.unit_set_b)]
        if len(rows):
            wide = rows.assign(pair=rows.model_a + " / " + rows.model_b).pivot_table(
                index="unit_set_a", columns="pair", values="value", sort=False)
            tables.append((f"{metric}: each layer against the same layer of every other model",
                           wide.rename_axis(None, axis=1).reset_index(names="unit_set")))
    return [ReportSection(
        "Representation similarity across models",
        text=("Computed from the streamed moments (no further pass): linear CKA, and orthogonal Procrustes "
              "similarity (nuclear norm of the cross-covariance over the product of Frobenius norms); both are 1 "
              "for a layer against a rotated or rescaled copy of itself. CCA, SVCCA, PWCCA and regression R^2 are "
              "in tables/similarity.parquet, with debiased CKA and mutual k-NN alignment from a seeded reservoir "
              "of token rows kept during the same pass, and each score's null (null_mean, null_std: the score "
              "against a token-shuffled partner, on the reservoir rows). Biased CKA has a floor for independent "
              "data of about width / tokens."),
        tables=tables,
        figures=[("similarity_layers.png", "Layer x layer similarity, mean over model pairs", _heatmaps(table, shown))])]


def _heatmaps(table: pd.DataFrame, metrics: list[str]) -> bytes:
    """A PNG with one layer x layer heatmap per metric (rows: layer of model a; columns: of model b)."""
    fig = _figure(4.2 * len(metrics), 3.8)
    for index, metric in enumerate(metrics, start=1):
        rows = table[table.metric == metric]
        grid = rows.pivot_table(index="unit_set_a", columns="unit_set_b", values="value", aggfunc="mean", sort=False)
        axes = fig.add_subplot(1, len(metrics), index)
        image = axes.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis")
        axes.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], rotation=90, fontsize=6)
        axes.set_yticks(range(grid.shape[0]), [str(r) for r in grid.index], fontsize=6)
        axes.set_title(metric)
        fig.colorbar(image, ax=axes, fraction=0.046)
    return _png(fig)
