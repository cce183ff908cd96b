"""The SAE tables of a run, from trained SAEs, what one pass measured and the latents' comparison.

- `saes`, one row per SAE: sae, model, unit_set, width, seed, train_seconds, fvu, l0, dead_latents,
  ce_clean, ce_spliced, ce_increase (nats), universal_fraction, calibrated_fraction (of its latents,
  against the other SAEs' latents).
- `sae_latents`, one row per (SAE, other SAE, latent): sae, other_sae, latent, mcs_dec, mcs_enc, match
  (Hungarian partner), hungarian_cos, shared, linear_mcs_dec, linear_shared, act_corr, act_partner,
  frequency (share of evaluation tokens it fires on).
- `sae_pairs`, one row per (SAE, other SAE, level): `PAIR_COLUMNS` + live_a (a's latents active on the
  evaluation rows, what the row's shares and means are over), model_a, model_b, same_model, fvu_swap.

Levels: "direct" (decoders and encoders as they are), "linear" (a's weights mapped by the orthogonal
Procrustes map between the two models' activation spaces; only for SAEs on different models, the map
being the identity on one model), "functional" (the latents' activations as one more unit set through
the universality engine: `act_corr` is a latent's max correlation with the other SAE's latents over
the evaluation stream; the row's `shared_fraction` is the share of a's live latents with act_corr >=
threshold, `mean_mcs` the mean act_corr, `null_mean_mcs` the mean of the rotation baseline, the
engine's own null). The pair rows summarise a's live latents only (active on the evaluation rows).
`fvu_swap`: a's model's activations reconstructed by b (through the Procrustes map and back when the
models differ), as a fraction of their variance.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ._pairs import PAIR_COLUMNS, pair_matches, summarize_match
from ._sae import SAE

__all__ = ["sae_tables", "LATENT_SET"]

LATENT_SET = "latents"  # the unit-set name of every SAE's latents in the latents' comparison


def sae_tables(saes: dict[str, SAE], about: pd.DataFrame, *, measured: pd.DataFrame, frequency: dict,
               latent_units: pd.DataFrame, latent_pairs: pd.DataFrame, cross_moments: dict, fvu_swap: dict,
               threshold: float, seed: int) -> dict[str, pd.DataFrame]:
    """The three tables (module docstring).

    saes : {name: SAE}; about : one row per name (sae, model, unit_set, width, seed, train_seconds)
    measured : one row per name (sae, fvu, l0, dead_latents, ce_clean, ce_spliced)
    frequency : {name: float64 [latents]}, the share of evaluation tokens each latent fires on
    latent_units, latent_pairs : the latents' `Comparison.units` / `.pairs` (models are SAE names)
    cross_moments : {(model_a, model_b): the centred cross-moment [d, d] of the two models' activations
        on the unit set (a's as rows), whose Procrustes map gives the linear level; absent: left out}
    fvu_swap : {(sae_a, sae_b): float}
    """
    model_of = dict(zip(about.sae, about.model))
    pair_rows, latent_frames = [], []
    for a in saes:
        for b in saes:
            if a == b:
                continue
            same_model = model_of[a] == model_of[b]
            frames, rows = _pair(saes[a], saes[b], a, b, cross_moments.get((model_of[a], model_of[b])), same_model,
                                 latent_pairs, frequency[a] > 0, threshold, seed)
            swap = fvu_swap.get((a, b), math.nan)
            pair_rows += [{**row, "model_a": model_of[a], "model_b": model_of[b], "same_model": same_model,
                           "fvu_swap": swap} for row in rows]
            frames["frequency"] = frequency[a]
            latent_frames.append(frames.assign(sae=a, other_sae=b))
    latents = pd.concat(latent_frames, ignore_index=True)
    latents = latents[["sae", "other_sae", *[c for c in latents.columns if c not in ("sae", "other_sae")]]]
    per_sae = latent_units.groupby("model").agg(universal_fraction=("universal", "mean"),
                                                **({"calibrated_fraction": ("calibrated_universal", "mean")}
                                                   if "calibrated_universal" in latent_units else {}))
    table = about.merge(measured, on="sae").merge(per_sae, left_on="sae", right_index=True, how="left")
    table["ce_increase"] = table.ce_spliced - table.ce_clean
    return {"saes": table, "sae_latents": latents,
            "sae_pairs": pd.DataFrame(pair_rows, columns=[*PAIR_COLUMNS, "live_a", "model_a", "model_b",
                                                          "same_model", "fvu_swap"])}


def _pair(a: SAE, b: SAE, name_a: str, name_b: str, cross_moment, same_model: bool, latent_pairs: pd.DataFrame,
          live: np.ndarray, threshold: float, seed: int) -> tuple[pd.DataFrame, list[dict]]:
    """(per-latent columns of a against b, PAIR_COLUMNS rows of the pair's levels). The rows summarise a's
    `live` latents (bool [latents_a]: active on the evaluation rows): a latent that never fires keeps a
    decoder row it was initialised with, which would read as an unshared feature."""
    tables, null, analytic = pair_matches(a, b, cross_moment=None if same_model else cross_moment,
                                          threshold=threshold, seed=seed)

    def summary(table: pd.DataFrame, level: str) -> dict:
        kept = table[live].copy()
        kept.attrs = table.attrs
        row = summarize_match(kept, sae_a=name_a, sae_b=name_b, level=level, null=null[live],
                              analytic_null_mcs=analytic)
        return row | {"latents_a": a.latents, "live_a": int(live.sum()),
                      "coverage_a": float((kept.mcs >= threshold).mean()) if len(kept) else math.nan}
    direct = tables["direct"]
    rows = [summary(table, level) for level, table in tables.items()]
    frame = pd.DataFrame({"latent": direct.latent, "mcs_dec": direct.mcs, "mcs_enc": direct.mcs_enc,
                          "match": direct.hungarian_partner, "hungarian_cos": direct.hungarian_cos,
                          "shared": direct.shared})
    if "linear" in tables:
        linear = tables["linear"]
        frame["linear_mcs_dec"], frame["linear_shared"] = linear.mcs.to_numpy(), linear.shared.to_numpy()
    else:
        frame["linear_mcs_dec"], frame["linear_shared"] = np.nan, pd.array([pd.NA] * len(frame), dtype="boolean")
    functional = latent_pairs[(latent_pairs.model == name_a) & (latent_pairs.other_model == name_b)]
    functional = functional.sort_values("unit")
    frame["act_corr"] = functional.max_corr.to_numpy()
    frame["act_partner"] = functional.partner_unit.to_numpy()
    rows.append(_functional_row(frame.act_corr.to_numpy(), functional.baseline_max_corr.to_numpy(), name_a, name_b,
                                a, b, threshold) | {"live_a": int(live.sum())})
    return frame, rows


def _functional_row(act_corr: np.ndarray, baseline: np.ndarray, name_a: str, name_b: str, a: SAE, b: SAE,
                    threshold: float) -> dict:
    """The "functional" PAIR_COLUMNS row: act_corr read as the MCS, the rotation baseline as the null."""
    live = np.isfinite(act_corr)
    row = dict.fromkeys(PAIR_COLUMNS, math.nan)
    shared = int((act_corr[live] >= threshold).sum())
    row |= {"sae_a": name_a, "sae_b": name_b, "level": "functional", "latents_a": a.latents, "latents_b": b.latents,
            "d_in": a.d_in, "threshold": threshold, "encoders": False, "matching": "max activation correlation",
            "shared": shared, "shared_fraction": shared / max(1, int(live.sum())),
            "mean_mcs": float(act_corr[live].mean()) if live.any() else math.nan,
            "median_mcs": float(np.median(act_corr[live])) if live.any() else math.nan,
            "null_mean_mcs": float(np.nanmean(baseline)) if np.isfinite(baseline).any() else math.nan}
    return row
