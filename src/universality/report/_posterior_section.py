"""Report section of seeds as samples of one posterior (`tables/seeds.parquet`, `seed_kl.parquet`,
`seed_clusters.parquet`): a seed x seed heatmap of symmetric KL, the seeds with their clusters and
log-losses, and the units universal within each cluster against those universal across all seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._html import ReportSection
from ._plots import _figure, _png

__all__ = ["posterior_sections"]


def _matrix(seeds: pd.DataFrame, seed_kl: pd.DataFrame) -> np.ndarray:
    """[K, K] symmetric KL in `seeds.model` order, zero diagonal."""
    models = seeds.model.tolist()
    grid = seed_kl.pivot(index="model_a", columns="model_b", values="symmetric_kl").reindex(index=models, columns=models)
    return grid.fillna(0.0).to_numpy()


def posterior_sections(seeds: pd.DataFrame, seed_kl: pd.DataFrame,
                       clusters: pd.DataFrame | None) -> list[ReportSection]:
    """One section; none when the seeds table is empty."""
    if not len(seeds):
        return []
    tables = [("One row per seed: its cluster, the cluster's share of the seeds, and its log-loss (nats per "
               "position); the mixture's log-loss and its regret against the best seed in every row",
               seeds[["model", "cluster", "cluster_weight", "log_loss", "mixture_log_loss", "regret"]])]
    if clusters is not None and len(clusters):
        tables.append(("Units universal within each cluster (against its other seeds only) and across all "
                       "seeds, with their overlap", clusters))
    return [ReportSection(
        "Seeds as samples of one posterior",
        text=("Each model's predictive distribution on the evaluation data (next token, or the product of a pair): "
              "symmetric KL between seeds (mean of both directions, nats per position), seeds clustered by it, each "
              "cluster's weight the share of seeds that reached it. The uniform mixture of all seeds has log-loss at "
              "most the seeds' mean (Jensen); a negative regret means it beats the best single seed."),
        tables=tables,
        figures=[("seed_kl.png", "Symmetric KL between seeds (nats per position)", _heatmap(seeds, seed_kl))])]


def _heatmap(seeds: pd.DataFrame, seed_kl: pd.DataFrame) -> bytes:
    """A PNG: seed x seed symmetric KL, seeds ordered by cluster, values written in small grids."""
    ordered = seeds.sort_values(["cluster", "model"], kind="stable")
    grid = _matrix(ordered, seed_kl)
    k = len(ordered)
    fig = _figure(1.6 + 0.45 * k, 1.2 + 0.45 * k)
    axes = fig.add_subplot()
    image = axes.imshow(grid, cmap="magma_r", vmin=0)
    labels = [f"{m} ({c})" for m, c in zip(ordered.model, ordered.cluster)]
    axes.set_xticks(range(k), labels, rotation=90, fontsize=7)
    axes.set_yticks(range(k), labels, fontsize=7)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                axes.text(j, i, f"{grid[i, j]:.2g}", ha="center", va="center", fontsize=6,
                          color="white" if grid[i, j] > grid.max() / 2 else "black")
    fig.colorbar(image, ax=axes, fraction=0.046, label="nats")
    return _png(fig)
