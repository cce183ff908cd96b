"""The neurons table (Gurnee et al. 2024): per MLP neuron its universality, activation moments,
family (best variance-reducing token feature) and weight statistics, in one streaming pass.

`neuron_table` consumes `(batch, context)` pairs: `batch` is `{model: {unit_set: Tensor[tokens, units]}}`
with each layer's `blocks.{l}.mlp.hook_pre` and `hook_post`; `context` is the keyword arguments of
`FamilyAccumulator.update` for the same tokens (token ids, previous ids, positions, labels).

| column group    | from                          | columns                                                     |
|-----------------|-------------------------------|-------------------------------------------------------------|
| keys            |                               | model, unit_set (the hook_post name), unit                  |
| universality    | `Comparison.units`            | mean_max_corr, mean_baseline, excess_corr, universal, dead  |
| moments         | `NeuronStatsAccumulator`      | pre_/post_ mean, var, skew, kurtosis, freq                  |
| family          | `FamilyAccumulator.table()`   | family_measured, best_feature_set, best_feature, variance_reduction, vr_<set> |
| weights         | `weight_statistics`           | w_in_norm, w_out_norm, b_in, cos_in_out, l2_penalty, vocab_*, embed_* |
| roles           | `prediction_neurons`, `entropy_neuron_scores` | role (prediction / suppression), null_share |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
import torch

from ._families import FamilyAccumulator, FeatureSet
from ._neuron_stats import NeuronStatsAccumulator
from ._weights import weight_statistics
from ._roles import entropy_neuron_scores, prediction_neurons

__all__ = ["neuron_table", "family_summary", "STAT_COLUMNS"]

_KEYS = ["model", "unit_set", "unit"]
# the statistics the paper compares between universal and other neurons
STAT_COLUMNS = ["post_skew", "post_kurtosis", "post_freq", "pre_mean", "pre_skew", "w_in_norm", "w_out_norm",
                "b_in", "cos_in_out", "l2_penalty", "vocab_var", "vocab_skew", "vocab_kurtosis"]


def neuron_table(batches: Iterable[tuple[dict, dict]], *, units: pd.DataFrame, feature_sets: Sequence[FeatureSet],
                 weights: Mapping[str, Mapping] | None = None, min_count: int = 10,
                 family_units: Mapping[tuple[str, str], torch.Tensor] | None = None) -> pd.DataFrame:
    """One row per (model, hook_post unit set, unit) of `units` (see the module docstring).

    batches : (batch, context) pairs, streamed once
    units : the `units` table of a `Comparison` over the hook_post unit sets
    feature_sets : the token features whose variance reduction names each neuron's family
    weights : {model: TransformerLens-named weights} for the weight statistics, or None to skip them
    family_units : {(model, hook_post set): int64 [units kept]} the units whose family is measured
        (their per-value sums are [values, units] float64, 148 GB for 5 GPT-2s over the vocabulary);
        None or a missing key: every unit. Others get `family_measured` False and no family.
    """
    stats = NeuronStatsAccumulator()
    families: dict[tuple[str, str], tuple[FamilyAccumulator, torch.Tensor | None]] = {}
    for batch, context in batches:
        stats.update(batch)
        for model, sets in batch.items():
            for name, x in sets.items():
                if not name.endswith("hook_post"):
                    continue
                if (model, name) not in families:
                    kept = (family_units or {}).get((model, name))
                    width = x.shape[1] if kept is None else len(kept)
                    families[(model, name)] = (FamilyAccumulator(feature_sets, width, min_count=min_count), kept)
                acc, kept = families[(model, name)]
                acc.update(x if kept is None else x[:, kept.to(x.device)], **context)
    table = units.merge(stats.table(), on=_KEYS, how="left")
    family_frames = [_family_frame(acc, kept).assign(model=model, unit_set=name)
                     for (model, name), (acc, kept) in families.items()]
    if family_frames:
        table = table.merge(pd.concat(family_frames, ignore_index=True), on=_KEYS, how="left")
        table["family_measured"] = table.family_measured.fillna(False).astype(bool)
        named = table.best_feature.notna()  # token strings, buckets and label codes: one text column
        table["best_feature"] = table.best_feature.where(~named, table.best_feature[named].astype(str))
    if weights:
        weight_frames = [weight_statistics(w).assign(model=model).merge(_roles(w), on=["unit_set", "unit"])
                         for model, w in weights.items()]
        table = table.merge(pd.concat(weight_frames, ignore_index=True), on=_KEYS, how="left")
    return table


def _family_frame(acc: FamilyAccumulator, kept: torch.Tensor | None) -> pd.DataFrame:
    """`acc`'s family table with units renumbered to the unit set's (`kept`: the units it saw)."""
    frame = acc.table().drop(columns="rank")
    if kept is not None:
        frame["unit"] = kept.cpu().numpy()[frame.unit.to_numpy()]
    return frame.assign(family_measured=True)


def _roles(weights: Mapping) -> pd.DataFrame:
    """Per neuron: prediction / suppression role and the share of w_out in W_U's null space (NaN when
    W_U has no direction below 0.1 of its largest singular value)."""
    roles = prediction_neurons(weights)[["unit_set", "unit", "role"]]
    # only the missing null space becomes NaN; any other problem with the weights is raised
    null = entropy_neuron_scores(weights, no_null_space="nan")[["unit_set", "unit", "null_share"]]
    return roles.merge(null, on=["unit_set", "unit"], validate="one_to_one")


def family_summary(neurons: pd.DataFrame) -> pd.DataFrame:
    """Per best feature set (family): live neurons, universal neurons, and each as a share, so the
    families that universal neurons fall in stand out against the base rate.

    When only some neurons' families were measured (`family_measured`: every universal one and a
    random sample of the rest, `pipeline/_neurons.py`), the other neurons' counts are the sample's,
    scaled by (other live neurons) / (sampled ones) and rounded: `neurons` is then an estimate (NaN
    when none of the others was measured)."""
    live = neurons[~neurons.dead.astype(bool)]
    universal = live.universal.astype(bool)
    measured = live.family_measured.astype(bool) if "family_measured" in live else pd.Series(True, live.index)
    others = live[~universal & measured]
    weight = (~universal).sum() / max(len(others), 1)  # each sampled non-universal neuron stands for this many
    family = live.best_feature_set.fillna("(none)")
    universal_counts = family[universal & measured].value_counts()
    estimated = universal_counts.add(weight * family[~universal & measured].value_counts(), fill_value=0)
    summary = pd.DataFrame({"neurons": estimated.round(), "universal": universal_counts}).fillna(0)
    summary = summary.astype(int).rename_axis("family").reset_index()
    if len(others) == 0 and (~universal).any():  # no base rate measured: none is given
        summary["neurons"] = float("nan")
    summary["pct_of_neurons"] = 100 * summary.neurons / max(len(live), 1)
    summary["pct_of_universal"] = 100 * summary.universal / max(int(universal.sum()), 1)
    return summary.sort_values("universal", ascending=False, kind="stable", ignore_index=True)
