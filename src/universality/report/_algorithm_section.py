"""Report section of algorithm identity on C_n (`tables/algorithms.parquet`, `algorithm_fractions`): each
transformer seed's clock / pizza diagnostics, and per attention rate the share of each algorithm."""

from __future__ import annotations

import pandas as pd

from .._defaults import CLOCK_MIN_DISTANCE_IRRELEVANCE, PIZZA_MAX_DISTANCE_IRRELEVANCE, PIZZA_MIN_SYMMETRICITY
from ._html import ReportSection
from ._plots import _figure, _png

__all__ = ["algorithm_sections"]


def algorithm_sections(tables: dict[str, pd.DataFrame]) -> list[ReportSection]:
    """One section; none when the run diagnosed no C_n transformer."""
    if "algorithms" not in tables:
        return []
    algorithms = tables["algorithms"]
    return [ReportSection(
        "Clock or pizza? Algorithms across seeds",
        text=("Zhong et al. 2023: modular-addition transformers put the residues on circles (the same key "
              "frequencies) but combine them in two ways. A clock adds angles (the inputs enter asymmetrically, "
              "the correct logit ignores a - b); a pizza reads the midpoint of the two points (symmetric gradients, "
              "the correct logit depends on a - b). Each circle is diagnosed alone (the embedding cut down to its "
              "frequency, the logits centred over answers and over pairs): pizza when gradient symmetricity >= "
              f"{PIZZA_MIN_SYMMETRICITY} and distance irrelevance <= {PIZZA_MAX_DISTANCE_IRRELEVANCE}; clock when "
              f"symmetricity is below it and distance irrelevance >= {CLOCK_MIN_DISTANCE_IRRELEVANCE}; mixed "
              "otherwise. A seed is a pizza when all its circles are, a clock when all are, else mixed. The whole "
              "model's two diagnostics, with the same cuts, give whole_model_algorithm: a pizza whose circles "
              "fill each other's gaps in a - b reads distance-blind there. Seeds that never generalised are left "
              "out of the fractions."),
        tables=[("Per attention rate: seeds, how many generalised, and the share of those that are clock, pizza "
                 "or mixed", tables["algorithm_fractions"]),
                ("Every transformer seed", algorithms)],
        figures=[("algorithms.png", "Gradient symmetricity against distance irrelevance, one point per circle "
                  "of each seed, coloured by attention rate", _scatter(algorithms))])]


def _scatter(algorithms: pd.DataFrame) -> bytes:
    fig = _figure(4.8, 3.6)
    axes = fig.add_subplot()
    circles = pd.DataFrame({  # one row per circle; the table holds each seed's circles space-separated
        "irrelevance": algorithms.circle_distance_irrelevance.str.split(),
        "symmetricity": algorithms.circle_gradient_symmetricity.str.split(),
        "rate": algorithms.attention_rate}).explode(["irrelevance", "symmetricity"]).dropna()
    points = axes.scatter(circles.irrelevance.astype(float), circles.symmetricity.astype(float),
                          c=circles.rate.astype(float), cmap="viridis", vmin=0, vmax=1, s=30)
    axes.axhline(PIZZA_MIN_SYMMETRICITY, color="0.5", linestyle=":")
    axes.axvline(PIZZA_MAX_DISTANCE_IRRELEVANCE, color="tab:red", linestyle=":", label="pizza below")
    axes.axvline(CLOCK_MIN_DISTANCE_IRRELEVANCE, color="tab:blue", linestyle=":", label="clock above")
    axes.set_xlabel("distance irrelevance")
    axes.set_ylabel("gradient symmetricity")
    axes.legend(fontsize=7)
    fig.colorbar(points, ax=axes, label="attention rate")
    return _png(fig)
