"""Per-neuron statistics of Gurnee et al. 2024, streamed: activation moments, and where universal
neurons rank within their layer (weight statistics: `_weights.py`).

| name                     | input                                        | returns                                   |
|--------------------------|----------------------------------------------|-------------------------------------------|
| `ActivationMoments`      | batches x [tokens, units]                    | per unit: mean, var, skew, kurtosis, freq |
| `NeuronStatsAccumulator` | batches {model: {unit_set: [tokens, units]}} | per (model, unit_set, unit): pre_*, post_* |
| `universal_vs_rest`      | a neuron table with a bool `universal`       | per statistic: within-layer percentiles   |
| `plot_universal_vs_rest` | that summary, a path                         | a PNG, one box per statistic, a line at 50 |

Conventions, everywhere in this module:
- `var` is the population variance M2 / n (ddof=0), as scipy.stats.skew and kurtosis with bias=True;
- `skew` = sqrt(n) M3 / M2^1.5; `kurtosis` is Pearson's n M4 / M2^2 (a Gaussian has 3, as in the
  paper's plots), not the excess kurtosis;
- `freq` is the fraction of tokens with activation > 0 (the reference code calls it "sparsity");
- a unit whose std is below float32 resolution of its mean (as `compare.dead_units`) is dead: its
  skew and kurtosis are NaN, never 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .._defaults import is_dead
from .._inputs import as_activations, check_batch, layout_of
from ..errors import UniversalityError

__all__ = ["ActivationMoments", "NeuronStatsAccumulator", "universal_vs_rest", "plot_universal_vs_rest"]

_MOMENT_COLUMNS = ["mean", "var", "skew", "kurtosis", "freq"]
_CHUNK_ENTRIES = 2**22  # float64 entries per slice of a batch: 32 MB, whatever the batch size
_PRE, _POST = "hook_pre", "hook_post"


class ActivationMoments:
    """Exact streaming central moments up to 4th order and activation frequency, per unit.

    Parameters
    ----------
    units : int
    device : str, default='cpu'

    State, float64 [units] unless said: `count_` (int, tokens seen), `mean_`, `m2_`, `m3_`, `m4_`
    (M_k = sum (x - mean)^k), `positive_` (int64 [units], tokens with x > 0). Each batch is reduced
    in float64 about its own mean, then merged with Pébay's (2008) pairwise formulas (Chan's for M2):
    exact, so shards merge into the state of one stream, and stable at any offset of the mean.

    >>> import torch
    >>> acc = ActivationMoments(2).update(torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
    >>> acc.table()[["mean", "var", "freq"]].values.tolist()
    [[2.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """

    def __init__(self, units: int, *, device: str = "cpu"):
        if units < 1:
            raise UniversalityError(f"units must be at least 1, got {units}")
        self.units = units
        self.device = device
        self.count_ = 0
        self.mean_, self.m2_, self.m3_, self.m4_ = (torch.zeros(units, dtype=torch.float64, device=device)
                                                    for _ in range(4))
        self.positive_ = torch.zeros(units, dtype=torch.int64, device=device)

    def update(self, x: torch.Tensor) -> "ActivationMoments":
        """Add a batch x [tokens, units] in place; returns self."""
        x = as_activations(x, "x", units=self.units)
        step = max(1, _CHUNK_ENTRIES // self.units)
        for start in range(0, x.shape[0], step):
            chunk = x[start:start + step].to(self.device, torch.float64)  # [chunk, units]
            # 1) the chunk's moments about its own mean, so powers of deviations never meet the offset
            mean = chunk.mean(dim=0)
            if not torch.isfinite(mean).all():
                raise UniversalityError("activations have NaN or inf entries; pass finite values")
            d = chunk - mean
            d2 = d * d
            # 2) Pébay's merge into the state
            self._absorb((chunk.shape[0], mean, d2.sum(dim=0), (d2 * d).sum(dim=0), (d2 * d2).sum(dim=0)))
            self.positive_ += (chunk > 0).sum(dim=0)
        return self

    def merge(self, other: "ActivationMoments") -> "ActivationMoments":
        """A new state holding both streams; neither input changes."""
        if other.units != self.units:
            raise UniversalityError(f"cannot merge moments of {self.units} and {other.units} units")
        merged = self.copy()
        merged._absorb((other.count_, other.mean_, other.m2_, other.m3_, other.m4_))
        merged.positive_ += other.positive_
        return merged

    def copy(self) -> "ActivationMoments":
        twin = ActivationMoments(self.units, device=self.device)
        twin.count_ = self.count_
        twin.mean_, twin.m2_, twin.m3_, twin.m4_, twin.positive_ = (
            t.clone() for t in (self.mean_, self.m2_, self.m3_, self.m4_, self.positive_))
        return twin

    def table(self) -> pd.DataFrame:
        """Per unit: mean, var (population), skew, kurtosis (Pearson, Gaussian = 3), freq (x > 0)."""
        if not self.count_:
            raise UniversalityError("no tokens streamed yet; call update(x) before table()")
        n = self.count_
        var = self.m2_ / n
        dead = is_dead(var, self.mean_)
        m2 = torch.where(dead, 1.0, self.m2_)
        skew = torch.where(dead, math.nan, math.sqrt(n) * self.m3_ / m2**1.5)
        kurtosis = torch.where(dead, math.nan, n * self.m4_ / m2**2)
        freq = self.positive_.double() / n
        return pd.DataFrame({name: value.cpu().numpy() for name, value in
                             zip(_MOMENT_COLUMNS, (self.mean_, var, skew, kurtosis, freq))})

    def _absorb(self, other: tuple) -> None:
        """Pébay's pairwise update of (n, mean, M2, M3, M4) with B = `other`, in numbered steps."""
        nb, mean_b, m2b, m3b, m4b = other
        na, m2a, m3a = self.count_, self.m2_, self.m3_
        if not nb:
            return
        n = na + nb
        delta = mean_b - self.mean_  # [units]
        # 1) M4 and M3 first: their corrections use A's M2 and M3 before they change
        self.m4_ = (self.m4_ + m4b + delta**4 * (na * nb * (na * na - na * nb + nb * nb) / n**3)
                    + 6 * delta**2 * (na * na * m2b + nb * nb * m2a) / n**2 + 4 * delta * (na * m3b - nb * m3a) / n)
        self.m3_ = m3a + m3b + delta**3 * (na * nb * (na - nb) / n**2) + 3 * delta * (na * m2b - nb * m2a) / n
        # 2) M2: Chan's rank-one correction (na nb / n) delta^2
        self.m2_ = m2a + m2b + delta**2 * (na * nb / n)
        # 3) the mean moves towards B's by nb / n
        self.mean_ = self.mean_ + delta * (nb / n)
        self.count_ = n


class NeuronStatsAccumulator:
    """Pre- and post-activation moments of every unit set of every model, paired by layer.

    Batches are `{model: {unit_set: Tensor[tokens, units]}}` (one model is enough). A unit set named
    `....hook_pre` (TransformerLens `blocks.{l}.mlp.hook_pre`, the MLP input before the activation
    function) pairs with `....hook_post` of the same model. Every set that is not a `hook_pre` gives
    one table row per unit; its pre_* columns are NaN when it has no `hook_pre` partner (SAE latents).

    Parameters
    ----------
    device : str, default='cpu'

    State: `layout_` {model: {unit_set: units}} from the first batch; `moments_` {model: {unit_set:
    ActivationMoments}}.

    >>> import torch
    >>> pre = torch.randn(50, 4)
    >>> acc = NeuronStatsAccumulator().update({"a": {"blocks.0.mlp.hook_pre": pre,
    ...                                               "blocks.0.mlp.hook_post": pre.relu()}})
    >>> acc.table().shape
    (4, 13)
    """

    def __init__(self, *, device: str = "cpu"):
        self.device = device
        self.layout_: dict[str, dict[str, int]] | None = None
        self.moments_: dict[str, dict[str, ActivationMoments]] = {}

    def update(self, batch) -> "NeuronStatsAccumulator":
        """Add one batch `{model: {unit_set: Tensor[tokens, units]}}` in place; returns self."""
        models = check_batch(batch)
        layout = layout_of(models)
        if self.layout_ is None:
            _check_pairs(layout)
            self.layout_ = layout
            self.moments_ = {m: {s: ActivationMoments(n, device=self.device) for s, n in sets.items()}
                             for m, sets in layout.items()}
        elif layout != self.layout_:
            raise UniversalityError("batch models, unit sets or sizes differ from the first batch; "
                                    "every batch must have the same layout")
        for model, sets in models.items():
            for name, x in sets.items():
                self.moments_[model][name].update(x)
        return self

    def merge(self, other: "NeuronStatsAccumulator") -> "NeuronStatsAccumulator":
        """A new accumulator holding both streams; neither input changes."""
        if self.layout_ is None or other.layout_ is None:
            return (other if self.layout_ is None else self).copy()
        if other.layout_ != self.layout_:
            raise UniversalityError("cannot merge neuron statistics of different layouts (models, unit sets or sizes)")
        merged = NeuronStatsAccumulator(device=self.device)
        merged.layout_ = {m: dict(sets) for m, sets in self.layout_.items()}
        merged.moments_ = {m: {s: acc.merge(other.moments_[m][s]) for s, acc in sets.items()}
                           for m, sets in self.moments_.items()}
        return merged

    def copy(self) -> "NeuronStatsAccumulator":
        twin = NeuronStatsAccumulator(device=self.device)
        if self.layout_ is not None:
            twin.layout_ = {m: dict(sets) for m, sets in self.layout_.items()}
            twin.moments_ = {m: {s: acc.copy() for s, acc in sets.items()} for m, sets in self.moments_.items()}
        return twin

    def table(self) -> pd.DataFrame:
        """One row per (model, unit_set, unit): model, unit_set (the hook_post name), unit,
        pre_mean, pre_var, pre_skew, pre_kurtosis, pre_freq (pre > 0), post_... likewise (post > 0)."""
        if self.layout_ is None:
            raise UniversalityError("no batches streamed yet; call update(batch) before table()")
        frames = []
        for model, sets in self.layout_.items():
            for name, units in sets.items():
                if name.endswith(_PRE):
                    continue
                partner = _partner(name)
                pre = (self.moments_[model][partner].table() if partner in sets
                       else pd.DataFrame(math.nan, index=range(units), columns=_MOMENT_COLUMNS))
                keys = pd.DataFrame({"model": model, "unit_set": name, "unit": np.arange(units)})
                post = self.moments_[model][name].table()
                frames.append(pd.concat([keys, pre.add_prefix("pre_"), post.add_prefix("post_")], axis=1))
        return pd.concat(frames, ignore_index=True)


def universal_vs_rest(table: pd.DataFrame, stat_columns: Sequence[str], universal_column: str = "universal", *,
                      group_columns: Sequence[str] = ("model", "unit_set")) -> pd.DataFrame:
    """Each statistic of universal neurons as percentiles within their layer (the paper's comparison).

    table : one row per neuron with `stat_columns`, a bool `universal_column` (NaN = not universal) and
        `group_columns` naming the layer (default each (model, unit_set))
    Each neuron's statistic is ranked among the non-NaN values of its layer and turned into the
    mid-rank percentile 100 (rank - 1/2) / n (ties share their average rank), so a layer's values
    spread evenly around 50 and a statistic unrelated to universality gives universal neurons a median
    near 50.

    Returns one row per statistic: statistic, universal (universal neurons with a value), p10, q1,
    median, q3, p90 of their percentiles, and rest_median (the other neurons' median percentile).

    >>> t = pd.DataFrame({"model": "a", "unit_set": "l0", "x": [1.0, 2.0, 3.0, 4.0],
    ...                   "universal": [False, False, False, True]})
    >>> universal_vs_rest(t, ["x"])[["statistic", "median"]].values.tolist()
    [['x', 87.5]]
    """
    needed = [*stat_columns, universal_column, *group_columns]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise UniversalityError(f"table has no column {missing[0]!r}; it has: {', '.join(map(str, table.columns))}")
    universal = table[universal_column].astype("boolean").fillna(False).to_numpy(bool)
    grouped = table.groupby(list(group_columns), sort=False)
    rows = []
    for stat in stat_columns:
        # 1) mid-rank percentile of each neuron within its layer (NaN values stay NaN)
        percentile = 100 * (grouped[stat].rank(method="average") - 0.5) / grouped[stat].transform("count")
        # 2) the universal neurons' distribution, beside the rest's median
        ours = percentile[universal].dropna().to_numpy()
        quantiles = np.percentile(ours, [10, 25, 50, 75, 90]) if len(ours) else [math.nan] * 5
        rows.append({"statistic": stat, "universal": len(ours),
                     **dict(zip(["p10", "q1", "median", "q3", "p90"], map(float, quantiles))),
                     "rest_median": float(percentile[~universal].median())})
    return pd.DataFrame(rows)


def plot_universal_vs_rest(summary: pd.DataFrame, path) -> Path:
    """Write a PNG of `universal_vs_rest(...)`: per statistic, a box of the universal neurons'
    within-layer percentiles (box q1-q3, line at the median, whiskers p10-p90) and a dashed line at 50,
    where a statistic unrelated to universality would sit. Returns the path; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazily: only plots need matplotlib
    from matplotlib.figure import Figure

    boxes = [{"label": row.statistic, "med": row.median, "q1": row.q1, "q3": row.q3, "whislo": row.p10,
              "whishi": row.p90, "fliers": []} for row in summary.itertuples() if row.universal > 0]
    if not boxes:
        raise UniversalityError("no statistic has universal neurons to plot; check the table's 'universal' column")
    fig = Figure(figsize=(1.5 + 0.9 * len(boxes), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bxp(boxes, showfliers=False, patch_artist=True, boxprops={"facecolor": "#dd8452"},
           medianprops={"color": "black"})
    ax.axhline(50, color="0.4", linestyle="--", linewidth=1)
    ax.set_ylim(0, 100)
    ax.set_ylabel("percentile within layer")
    ax.set_title("universal neurons vs the rest of their layer")
    ax.tick_params(axis="x", labelrotation=30)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    fig.savefig(partial, format="png", dpi=110)
    os.replace(partial, path)
    return path


def _partner(name: str) -> str | None:
    """The hook_pre name of a hook_post unit set (None for any other set)."""
    return name[:-len(_POST)] + _PRE if name.endswith(_POST) else None


def _check_pairs(layout: dict[str, dict[str, int]]) -> None:
    """Every hook_pre set has its hook_post partner, with as many units."""
    for model, sets in layout.items():
        for name, units in sets.items():
            if name.endswith(_PRE):
                post = name[:-len(_PRE)] + _POST
                if sets.get(post) != units:
                    raise UniversalityError(f"{model}/{name} ({units} units) needs {post!r} with as many units; "
                                            f"stream both, or drop {name!r}")
