"""Report section of the neurons table: which families universal neurons fall in, and how their
statistics sit within their layers (Gurnee et al. 2024, the universal-vs-rest comparison)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from ._html import ReportSection

__all__ = ["neuron_sections", "head_sections"]

_TOP_COLUMNS = ["model", "unit_set", "unit", "excess_corr", "best_feature_set", "best_feature",
                "variance_reduction", "post_freq", "post_skew", "post_kurtosis", "role", "null_share"]


def neuron_sections(neurons: pd.DataFrame) -> list[ReportSection]:
    """Families (best variance-reducing feature) of universal vs all neurons; statistics of universal
    neurons as within-layer percentiles (table and box plot); the most universal neurons' families."""
    from ..neurons import STAT_COLUMNS, family_summary, plot_universal_vs_rest, universal_vs_rest
    stats = [c for c in STAT_COLUMNS if c in neurons and neurons[c].notna().any()]
    live = neurons[~neurons.dead.astype(bool)]
    top = live.sort_values("excess_corr", ascending=False, kind="stable").head(25)
    tables = [("family of each live neuron: the feature set of its best variance reduction", family_summary(neurons)),
              ("most universal neurons and their best feature", top[[c for c in _TOP_COLUMNS if c in top]])]
    figures = []
    if live.universal.any() and stats:
        summary = universal_vs_rest(live, stats)
        tables.insert(1, ("universal neurons' statistics as percentiles within their layer (50 = typical)", summary))
        with tempfile.TemporaryDirectory() as scratch:
            path = plot_universal_vs_rest(summary, Path(scratch) / "plot.png")
            figures.append(("universal_vs_rest.png", "Universal neurons' statistics as within-layer percentiles",
                            Path(path).read_bytes()))
    return [ReportSection(
        "What universal neurons do: statistics and families",
        text=("Family = the binary token feature whose split explains most of a neuron's activation variance "
              "(variance reduction, streamed); moments are exact streaming pre-/post-activation moments "
              "(kurtosis: Pearson, normal = 3; freq: share of tokens with activation > 0)."),
        tables=tables, figures=figures)]


def head_sections(heads: pd.DataFrame) -> list[ReportSection]:
    """Attention heads of every model with their scores and, for models after the first, the head of
    the first model whose pattern they match best (is the same circuit present in every seed?)."""
    return [ReportSection(
        "Attention heads across models",
        text=("prev_token: mean attention to the previous token; bos_sink: to position 0; positional: the largest "
              "mean attention at one fixed offset; induction: on a random sequence repeated twice, attention to "
              "the token after the previous occurrence. *_in_first: the best-correlated head of the first model "
              "(best_: max; matched_: one-to-one Hungarian matching)."),
        tables=[("heads", heads)], max_rows=200)]
