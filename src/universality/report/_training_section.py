"""Report section of universality over training (`tables/training_*.parquet`): percent universal per
layer against the checkpoint step with the training loss on a second axis, and per layer where
universality emerges relative to the loss curve."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._html import ReportSection
from ._plots import _figure, _png

__all__ = ["training_sections", "emergence_table"]


def training_sections(tables: dict[str, pd.DataFrame], curves: dict[str, pd.DataFrame]) -> list[ReportSection]:
    """One section; none when the run has no `training_universality` table."""
    if "training_universality" not in tables:
        return []
    layers, loss = tables["training_universality"], mean_loss(curves)
    cka = tables["training_cka"].pivot_table(index=["unit_set", "step"], columns="relation", values="cka",
                                              aggfunc="mean").reset_index().rename_axis(None, axis=1)
    return [ReportSection(
        "Universality over training",
        text=("The seeds compared again at each checkpoint the trainer kept, with the run's threshold and rotations. "
              "Emergence: the first checkpoint at which half of the units universal at the end already are "
              "(persistence >= 0.5); loss drop done: (loss at step 0 - loss then) / (loss at step 0 - final loss), "
              "the training loss averaged over seeds. CKA: each seed's layer against itself at the next and at the "
              "final checkpoint, mean over seeds."),
        tables=[("Where universality emerges, per layer", emergence_table(tables["training_persistence"],
                                                                          tables["training_units"], layers, loss)),
                ("CKA between checkpoints, per layer and step", cka)],
        figures=[("training_universality.png", "Percent universal per layer against the step (mean over seeds), "
                  "training loss on the right axis", _universality_png(layers, loss))])]


def mean_loss(curves: dict[str, pd.DataFrame]) -> pd.Series:
    """The training loss per step, averaged over the models whose curves log it (empty if none do)."""
    frames = [c[["step", "loss"]] for c in curves.values() if {"step", "loss"} <= set(c.columns)]
    return pd.concat(frames).groupby("step").loss.mean() if frames else pd.Series(dtype=float)


def emergence_table(persistence: pd.DataFrame, units: pd.DataFrame, layers: pd.DataFrame,
                    loss: pd.Series) -> pd.DataFrame:
    """Per unit set: final percent universal, the emergence step (persistence >= 0.5, pooled over seeds),
    the median first crossing and the share staying universal of the final universal units, and the loss
    and share of the loss drop done at the emergence step (NaN without a curve)."""
    pooled = persistence.groupby(["unit_set", "step"]).agg(final=("final_universal", "sum"),
                                                          already=("already_universal", "sum")).reset_index()
    final = units[units.final_universal]
    final_step = layers.step.max()
    rows = []
    for unit_set, group in pooled.groupby("unit_set", sort=False):
        reached = group[group.already >= 0.5 * group.final].step
        emerged = reached.min() if len(reached) and group.final.iloc[0] > 0 else np.nan
        ended = final[final.unit_set == unit_set]
        at_loss = _loss_at(loss, emerged)
        drop = (loss.iloc[0] - at_loss) / (loss.iloc[0] - loss.iloc[-1]) if len(loss) > 1 else np.nan
        rows.append({"unit_set": unit_set,
                     "final_pct_universal": layers[(layers.step == final_step) & (layers.unit_set == unit_set)]
                     .pct_universal.mean(),
                     "final_universal_units": int(group.final.iloc[0]), "emergence_step": emerged,
                     "median_first_crossing": ended.first_universal_step.median(),
                     "share_staying": ended.stays_universal.mean() if len(ended) else np.nan,
                     "loss_at_emergence": at_loss, "loss_drop_done": drop})
    return pd.DataFrame(rows)


def _loss_at(loss: pd.Series, step: float) -> float:
    """The mean training loss at the logged step nearest `step` (NaN without a curve or a step)."""
    if not len(loss) or np.isnan(step):
        return np.nan
    return float(loss.iloc[int(np.abs(loss.index.to_numpy() - step).argmin())])


def _universality_png(layers: pd.DataFrame, loss: pd.Series) -> bytes:
    """Percent universal per unit set against the step (symlog x: checkpoints are log-spaced from 0),
    the mean training loss on a second (log) y axis."""
    fig = _figure(7, 3.8)
    axes = fig.add_subplot(1, 1, 1)
    for unit_set, group in layers.groupby("unit_set", sort=False):
        mean = group.groupby("step").pct_universal.mean()
        axes.plot(mean.index, mean.to_numpy(), marker="o", label=str(unit_set))
    axes.set_xscale("symlog", linthresh=1)
    axes.set_xlabel("step")
    axes.set_ylabel("% of live units universal")
    axes.legend(fontsize=7, loc="upper left")
    if len(loss):
        right = axes.twinx()
        right.plot(loss.index, loss.to_numpy(), color="grey", linestyle="--", linewidth=1)
        right.set_yscale("log")
        right.set_ylabel("training loss (dashed)")
    return _png(fig)
