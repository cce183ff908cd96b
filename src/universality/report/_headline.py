"""The numbers of the report's headline: the universal count and how sure it is.

| function              | from                      | gives                                                        |
|-----------------------|---------------------------|--------------------------------------------------------------|
| `ungeneralised`       | `group_seeds`             | models whose final test accuracy is below the stated level   |
| `without_models`      | units, pairs              | the tables restricted to other models, excess recomputed     |
| `partner_claims`      | units, pairs              | per pair row of a universal unit: universal units claiming its partner |
| `headline`            | units, pairs, settings    | counts, null expectation, spread across seeds, r > 0.9 count |
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd

from ..compare import layer_summary
from ..compare import universality_null
from ..errors import UniversalityError
from ._plots import live_mask, universal_mask

__all__ = ["ungeneralised", "without_models", "partner_claims", "headline", "MATCHED_R"]

MATCHED_R = 0.9  # "matched": mean best Pearson r over the other models above this, whatever the baseline
_UNIT_KEY = ["model", "unit_set", "unit"]
_PARTNER_KEY = ["other_model", "partner_unit_set", "partner_unit"]


def ungeneralised(group_seeds: pd.DataFrame | None, level: float) -> dict[str, float]:
    """Models of `group_seeds` (columns model, final_test_acc) whose test accuracy is below `level`."""
    if group_seeds is None or not len(group_seeds):
        return {}
    missing = [c for c in ("model", "final_test_acc") if c not in group_seeds]
    if missing:
        raise UniversalityError(f"group_seeds table is missing columns {missing}; expected model, final_test_acc")
    below = group_seeds[~(group_seeds["final_test_acc"].astype(float) >= level)]
    return {str(m): float(a) for m, a in zip(below["model"], below["final_test_acc"])}


def without_models(units: pd.DataFrame, pairs: pd.DataFrame, excluded: Collection[str], threshold: float):
    """units, pairs, layers of the models not in `excluded`, with mean max corr, mean baseline, excess
    and `universal` recomputed from the pair rows against the kept models only (same threshold)."""
    kept_pairs = pairs[~pairs["model"].isin(excluded) & ~pairs["other_model"].isin(excluded)]
    kept_units = units[~units["model"].isin(excluded)].drop(columns=["mean_max_corr", "mean_baseline"])
    means = kept_pairs.groupby(_UNIT_KEY, sort=False).agg(mean_max_corr=("max_corr", "mean"),
                                                          mean_baseline=("baseline_max_corr", "mean"))
    kept_units = kept_units.merge(means.reset_index(), on=_UNIT_KEY, how="left")
    kept_units["excess_corr"] = kept_units["mean_max_corr"] - kept_units["mean_baseline"]
    kept_units["universal"] = kept_units["excess_corr"].fillna(-np.inf).to_numpy() > threshold
    kept_units = kept_units[list(units.columns)]
    return kept_units.reset_index(drop=True), kept_pairs.reset_index(drop=True), layer_summary(kept_units)


def partner_claims(units: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Pair rows of universal units with `claims`: how many universal units (of any model) have the
    same partner (other model, unit set, unit) as their best match. Near-duplicates share partners."""
    universal = units.loc[universal_mask(units), _UNIT_KEY]
    rows = pairs.merge(universal, on=_UNIT_KEY)
    rows = rows[rows["partner_unit"] >= 0]
    counts = rows.groupby(_PARTNER_KEY, sort=False).size().rename("claims").reset_index()
    return rows.merge(counts, on=_PARTNER_KEY, how="left")


def headline(units: pd.DataFrame, pairs: pd.DataFrame, settings: Mapping) -> dict:
    """Counts for the headline (NaN where undefined):

    units, dead, live, universal, pct; null_expected / null_min / null_max (`universality_null`, needs
    `baseline_max_corr_r{r}` columns from >= 2 rotations); per_model min / median / max universal count;
    matched (live units with mean max corr > `MATCHED_R`) and matched_pct; median_baseline of live units;
    partner links of universal units, distinct partners and the largest number of claims on one partner.
    """
    live, universal = live_mask(units), universal_mask(units)
    n_live, n_universal = int(live.sum()), int(universal.sum())
    per_model = units[universal].groupby("model").size().reindex(pd.unique(units["model"]), fill_value=0)
    with warnings.catch_warnings():  # no live unit: NaN medians are the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        median_baseline = float(np.nanmedian(units.loc[live, "mean_baseline"].to_numpy(dtype=float))) \
            if n_live else math.nan
    matched = int((units.loc[live, "mean_max_corr"].to_numpy(dtype=float) > MATCHED_R).sum())
    null = universality_null(pairs, threshold=float(settings["threshold"]))  # dead units: NaN, left out
    claims = partner_claims(units, pairs)
    return {
        "units": len(units), "dead": len(units) - n_live, "live": n_live, "universal": n_universal,
        "pct": 100.0 * n_universal / n_live if n_live else math.nan,
        "null_rotations": null["rotations"], "null_expected": null["expected"],
        "null_min": null["min"], "null_max": null["max"],
        "per_model_min": int(per_model.min()) if len(per_model) else 0,
        "per_model_median": float(per_model.median()) if len(per_model) else math.nan,
        "per_model_max": int(per_model.max()) if len(per_model) else 0,
        "matched": matched, "matched_pct": 100.0 * matched / n_live if n_live else math.nan,
        "median_baseline": median_baseline,
        "partner_links": len(claims), "distinct_partners": len(claims.drop_duplicates(_PARTNER_KEY)),
        "most_claims": int(claims["claims"].max()) if len(claims) else 0,
    }
