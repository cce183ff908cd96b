"""The report's figures, each drawn from the run's tables and returned as PNG bytes.

| figure                  | drawn from | shows                                                      |
|-------------------------|------------|------------------------------------------------------------|
| `corr_vs_baseline_png`  | `units`    | mean max r (y) against mean baseline r (x), per unit set   |
| `excess_hist_png`       | `units`    | excess r of live units, universal ones in a second colour  |
| `pct_universal_png`     | `layers`   | percent of live units universal, per unit set and model    |
| `training_curves_png`   | `curves`   | loss against step, per model (log y)                       |

Figures are built on `matplotlib.figure.Figure` with an Agg canvas, never through `pyplot`, so
drawing a report neither opens windows nor changes the caller's matplotlib backend.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

__all__ = [
    "live_mask", "universal_mask", "headline_counts",
    "corr_vs_baseline_png", "excess_hist_png", "pct_universal_png", "training_curves_png", "training_curves_figure",
]

_OTHER = "#4c72b0"  # live, not universal
_UNIVERSAL = "#dd8452"
_DPI = 110


def live_mask(units: pd.DataFrame) -> pd.Series:
    """Rows of `units` whose unit varied over the streamed tokens (`dead` is False)."""
    return ~units["dead"].fillna(False).astype(bool)


def universal_mask(units: pd.DataFrame) -> pd.Series:
    """Rows of `units` that are live and flagged `universal`."""
    return live_mask(units) & units["universal"].fillna(False).astype(bool)


def headline_counts(units: pd.DataFrame) -> dict[str, float]:
    """Counts over every (model, unit_set, unit) row: units, dead, live, universal, pct (NaN if no live)."""
    live = int(live_mask(units).sum())
    universal = int(universal_mask(units).sum())
    return {
        "units": len(units),
        "dead": len(units) - live,
        "live": live,
        "universal": universal,
        "pct": 100.0 * universal / live if live else math.nan,
    }


def _figure(width: float, height: float):
    """A Figure on an Agg canvas (matplotlib imported lazily: only reports need it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _empty(message: str) -> bytes:
    """A small placeholder figure, so the report always has an image where a plot belongs."""
    fig = _figure(6, 1.6)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="0.35")
    return _png(fig)


def _pct_text(universal: int, live: int) -> str:
    return f"{universal} of {live} live universal ({100 * universal / live:.1f}%)" if live else "no live units"


def corr_vs_baseline_png(units: pd.DataFrame, threshold: float) -> bytes:
    """Per unit set, mean max r against mean baseline r of live units, with y = x and y = x + threshold.

    One panel per unit set (in order of appearance, shared axes); universal units in a second colour.
    Points above the dashed line y = x + threshold have excess r above the threshold.
    """
    unit_sets = list(pd.unique(units["unit_set"]))
    if not unit_sets:
        return _empty("no units")
    live, universal = live_mask(units), universal_mask(units)
    xy = units[["mean_baseline", "mean_max_corr"]].to_numpy(dtype=float)
    finite = live.to_numpy() & np.isfinite(xy).all(axis=1)

    # 1) shared limits over every panel: correlations live in [-1, 1]; include 0 and both lines' ends
    lo = min(0.0, float(xy[finite].min())) if finite.any() else 0.0
    lo, hi = max(-1.0, lo - 0.03), 1.03

    ncols = min(len(unit_sets), 4)
    nrows = math.ceil(len(unit_sets) / ncols)
    fig = _figure(max(5.0, 3.4 * ncols + 0.4), 3.2 * nrows + 0.9)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    line = np.array([lo, hi])
    for ax, unit_set in zip(axes, unit_sets):
        in_set = (units["unit_set"] == unit_set).to_numpy()
        # 2) live units first, universal ones drawn on top in the second colour
        for mask, colour, label in ((finite & in_set & ~universal.to_numpy(), _OTHER, "live unit"),
                                    (finite & in_set & universal.to_numpy(), _UNIVERSAL, "universal unit")):
            ax.scatter(xy[mask, 0], xy[mask, 1], s=7, alpha=0.55, linewidths=0, color=colour,
                       label=label, rasterized=True)
        ax.plot(line, line, color="0.3", lw=1, label="y = x (no excess)")
        ax.plot(line, line + threshold, color="0.3", lw=1, ls="--", label=f"y = x + {threshold:g} (threshold)")
        n_live = int((live.to_numpy() & in_set).sum())
        n_univ = int((universal.to_numpy() & in_set).sum())
        n_dead = int(in_set.sum()) - n_live
        ax.set_title(f"{unit_set}\n{_pct_text(n_univ, n_live)}, {n_dead} dead", fontsize=9)
        if not n_live:
            ax.text(0.5, 0.5, "all units dead", transform=ax.transAxes, ha="center", color="0.35")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.grid(alpha=0.25)
    for ax in axes[len(unit_sets):]:
        ax.set_visible(False)
    # 3) axis labels on the lowest visible panel of each column (the last row may be part empty)
    for column in range(ncols):
        ax = axes[max(i for i in range(column, len(unit_sets), ncols))]
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("mean baseline max corr (Pearson r, rotated null)", fontsize=9)
    for ax in axes.reshape(nrows, ncols)[:, 0]:
        ax.set_ylabel("mean max corr (Pearson r)", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=2 if ncols == 1 else 4, fontsize=8,
               markerscale=2, frameon=False)
    return _png(fig)


def excess_hist_png(units: pd.DataFrame, threshold: float) -> bytes:
    """Histogram of excess r over live units, universal units' bars in a second colour, threshold marked."""
    counts = headline_counts(units)
    live, universal = live_mask(units), universal_mask(units)
    excess = units["excess_corr"].to_numpy(dtype=float)
    finite = live.to_numpy() & np.isfinite(excess)
    if not finite.any():
        return _empty(f"excess corr: no live units with a finite value ({counts['dead']} dead)")

    values = excess[finite]
    bins = np.histogram_bin_edges(np.append(values, threshold), bins=int(np.clip(np.sqrt(values.size), 10, 60)))
    fig = _figure(7, 3.8)
    ax = fig.add_subplot()
    is_universal = universal.to_numpy()[finite]
    # stacked, so each bin's height is its total and the universal share sits on top in its colour
    ax.hist([values[~is_universal], values[is_universal]], bins=bins, stacked=True, color=[_OTHER, _UNIVERSAL],
            label=["live unit", "universal unit"])
    ax.axvline(threshold, color="0.2", ls="--", lw=1.2, label=f"threshold {threshold:g}")
    ax.set_xlabel("excess corr (mean max r − mean baseline r, Pearson r)")
    ax.set_ylabel("units (count)")
    pct = "n/a" if math.isnan(counts["pct"]) else f"{counts['pct']:.1f}%"
    ax.set_title(f"{counts['universal']} of {counts['live']} live units universal ({pct}); "
                 f"{counts['dead']} dead not shown", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.25, axis="y")
    return _png(fig)


def pct_universal_png(layers: pd.DataFrame) -> bytes:
    """Percent of live units universal per unit set (x, in order of appearance), one bar per model.

    Grouped bars rather than lines: unit sets are categories, and models with equal values stay visible.
    A unit set whose units are all dead (NaN percent) gets no bar and an "all dead" note.
    """
    unit_sets = list(pd.unique(layers["unit_set"]))
    if not unit_sets:
        return _empty("no unit sets")
    models = list(pd.unique(layers["model"]))
    x_of = {name: i for i, name in enumerate(unit_sets)}
    width = min(0.25, 0.8 / len(models))  # K bars fill at most 80% of each unit set's slot
    fig = _figure(max(5.0, 1.5 + 0.35 * len(unit_sets) * max(2, len(models))), 3.8)
    ax = fig.add_subplot()
    for k, model in enumerate(models):
        rows = layers[layers["model"] == model]
        x = np.array([x_of[name] for name in rows["unit_set"]]) + (k - (len(models) - 1) / 2) * width
        ax.bar(x, rows["pct_universal"].to_numpy(dtype=float), width=width, label=str(model))
    pct = layers["pct_universal"].to_numpy(dtype=float)
    top = float(np.nanmax(pct)) if np.isfinite(pct).any() else 0.0
    ax.set_ylim(0, min(100.0, max(1.0, top * 1.15)))
    all_dead = layers.groupby("unit_set", sort=False)["pct_universal"].apply(lambda p: p.isna().all())
    for name in all_dead[all_dead].index:
        ax.text(x_of[name], ax.get_ylim()[1] * 0.03, "all dead", ha="center", va="bottom", fontsize=8,
                color="0.35", rotation=90)
    slanted = len(unit_sets) > 2  # long TransformerLens names collide when upright
    ax.set_xticks(range(len(unit_sets)), unit_sets, rotation=30 if slanted else 0,
                  ha="right" if slanted else "center", fontsize=8)
    ax.set_xlim(-0.5, len(unit_sets) - 0.5)
    ax.set_xlabel("unit set")
    ax.set_ylabel("universal (% of live units)")
    ax.set_title("universal units per unit set", fontsize=10)
    fig.legend(title="model", fontsize=8, frameon=False, loc="outside right upper")  # bars reach any height
    ax.grid(alpha=0.25, axis="y")
    return _png(fig)


def training_curves_png(curves: dict[str, pd.DataFrame]) -> bytes:
    """Training loss against step per model, log y; points with loss <= 0 or NaN are skipped."""
    return _png(training_curves_figure(curves))


def training_curves_figure(curves: dict[str, pd.DataFrame]):
    """The figure of `training_curves_png`. Labelled log ticks thin out as the loss spans more decades
    (1, 2, 3, 5 per decade below one decade; 1, 2, 5 below three; 1 below seven; else every few decades),
    so labels never overlap: group runs go from ~5 nats to ~1e-7."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = _figure(7, 3.8)
    ax = fig.add_subplot()
    shown = []
    for model, curve in curves.items():
        step, loss = curve["step"].to_numpy(dtype=float), curve["loss"].to_numpy(dtype=float)
        keep = np.isfinite(step) & np.isfinite(loss) & (loss > 0)
        ax.plot(step[keep], loss[keep], lw=1.3, label=str(model))
        shown.append(loss[keep])
    ax.set_yscale("log")
    losses = np.concatenate(shown) if shown else np.empty(0)
    decades = float(np.log10(losses.max() / losses.min())) if losses.size else 0.0
    subs = (1.0, 2.0, 3.0, 5.0) if decades <= 1 else (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
    ax.yaxis.set_major_locator(LogLocator(subs=subs, numticks=9 if decades > 7 else "auto"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 0.5, 2 rather than 5 x 10^-1
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("step (optimizer updates)")
    ax.set_ylabel("training loss (nats/token, log scale)")
    ax.set_title("training curves", fontsize=10)
    ax.legend(title="model", fontsize=8, frameon=False)
    ax.grid(alpha=0.25, which="both")
    return fig
