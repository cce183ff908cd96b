"""`Comparison`: the result of comparing K models' units, with the moments it was derived from."""

from __future__ import annotations

import json
import numbers
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .._defaults import THRESHOLD
from ..errors import UniversalityError
from ..moments import MomentAccumulator, load_moments, save_moments
from ._calibration import DEFAULT_ALPHA, DEFAULT_CALIBRATION_ROTATIONS, calibrated_tables, check_alpha
from ._correlation import pearson
from ._universality import layer_summary, rotated_maxima, rotation_columns, universality_tables

__all__ = ["Comparison", "compare_moments"]


class Comparison:
    """Universality of every unit of every model, against every other model.

    Attributes
    ----------
    units : DataFrame, one row per (model, unit_set, unit)
        `model, unit_set, unit, mean_max_corr, mean_baseline, excess_corr, universal, dead`
        (+ `z, p_value, q_value, calibrated_universal` after `calibrate`).
        mean_max_corr / mean_baseline average over the other models; `universal` is
        excess_corr > threshold; dead units (zero variance) have NaN correlations.
    pairs : DataFrame, one row per (model, unit_set, unit, other_model)
        `max_corr, partner_unit_set, partner_unit, baseline_max_corr`; partner_unit is -1 (and
        partner_unit_set "") when the unit or every unit of the other model is dead.
    layers : DataFrame, one row per (model, unit_set)
        unit, dead and universal counts, percent universal of live units, medians.
    moments : MomentAccumulator
        The streamed state every number here is derived from (under a multi-pass plan: the means
        and Grams only; the cross blocks were reduced pass by pass).
    plan : moments.Plan or None
        The passes and blocks used (None when the comparison was made from a finished state).
    threshold, rotations, seed : the settings used.
    """

    def __init__(self, moments: MomentAccumulator, units: pd.DataFrame, pairs: pd.DataFrame, *,
                 threshold: float, rotations: int, seed: int, plan=None):
        self.moments, self.units, self.pairs = moments, units, pairs
        self.threshold, self.rotations, self.seed, self.plan = threshold, rotations, seed, plan

    @property
    def models(self) -> list[str]:
        return list(self.moments.models)

    @property
    def layers(self) -> pd.DataFrame:
        return layer_summary(self.units)

    def correlation(self, model_a: str, model_b: str) -> torch.Tensor:
        """Pearson correlation, float64 [units_a, units_b], units concatenated in unit-set order."""
        for model in (model_a, model_b):
            if model not in self.models:
                raise UniversalityError(f"unknown model {model!r}; choose one of: {', '.join(self.models)}")
        if model_a == model_b:
            raise UniversalityError("correlation of a model with itself is not stored; pass two different models")
        return pearson(self.moments, model_a, model_b)

    def calibrate(self, rotations: int = DEFAULT_CALIBRATION_ROTATIONS, alpha: float = DEFAULT_ALPHA
                  ) -> "Comparison":
        """This comparison with calibrated universality (`compare._calibration`): `units` gain `z,
        p_value, q_value, calibrated_universal`, `pairs` gain `baseline_mean, baseline_std, z,
        p_empirical, p_value, q_value`; the paper's columns stay as they are. The `rotations` maxima are
        this comparison's own first ones when it has that many (independent Haar rotations); otherwise all
        are computed from the state in antithetic pairs (`_universality.rotated_maxima`: half the products),
        which needs the cross-moments: a one-pass state."""
        check_settings(self.threshold, rotations, self.seed)
        alpha = check_alpha(alpha)
        if rotations < 2:
            raise UniversalityError(f"calibration needs rotations >= 2, got {rotations}; e.g. rotations=32")
        rotated = self.pairs[rotation_columns(self.pairs) or ["baseline_max_corr"]].to_numpy(float)  # [rows, own]
        if rotations > rotated.shape[1]:
            if not self.moments.is_default:
                raise UniversalityError(
                    f"this comparison has {self.rotations} rotation(s) and its state no longer holds the cross-"
                    f"moments (a multi-pass plan or a sketch reduced them); compare again with rotations={rotations}, "
                    f"or calibrate with rotations={self.rotations}")
            rotated = rotated_maxima(self.moments, rotations=rotations, seed=self.seed)
        units, calibrated = calibrated_tables(self.units, self.pairs, rotated[:, :rotations], alpha=alpha)
        return Comparison(self.moments, units, calibrated, threshold=self.threshold, rotations=self.rotations,
                          seed=self.seed, plan=self.plan)

    def __repr__(self) -> str:
        live = int((~self.units["dead"]).sum())
        return (f"Comparison({len(self.models)} models, {len(self.units)} units, {live} live, "
                f"{int(self.units['universal'].sum())} universal at excess > {self.threshold})")

    def save(self, path: str | Path) -> Path:
        """Write into directory `path` (replaced atomically): tables as parquet, moments, settings."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.units.to_parquet(tmp / "units.parquet", index=False)
        self.pairs.to_parquet(tmp / "pairs.parquet", index=False)
        save_moments(self.moments, tmp / "moments")
        settings = {"threshold": self.threshold, "rotations": self.rotations, "seed": self.seed}
        (tmp / "comparison.json").write_text(json.dumps(settings))
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> "Comparison":
        path = Path(path)
        if not (path / "comparison.json").is_file():
            raise UniversalityError(f"{str(path)!r} is not a saved Comparison (no comparison.json)")
        settings = json.loads((path / "comparison.json").read_text())
        moments, _ = load_moments(path / "moments", device=device)
        return cls(moments, pd.read_parquet(path / "units.parquet"), pd.read_parquet(path / "pairs.parquet"),
                   **settings)


def check_settings(threshold: float, rotations: int, seed: int = 0) -> None:
    """Validate comparison settings before any data is read: one line naming the setting and the fix."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold <= 1:
        raise UniversalityError(f"threshold must be a number in (0, 1], got {threshold!r}; e.g. threshold=0.5")
    if isinstance(rotations, bool) or not isinstance(rotations, numbers.Integral) or rotations < 1:
        raise UniversalityError(f"rotations must be an integer >= 1, got {rotations!r}; e.g. rotations=1")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
        raise UniversalityError(f"seed must be an integer in [0, 2^63), got {seed!r}; e.g. seed=0")


def compare_moments(moments: MomentAccumulator, *, threshold: float = THRESHOLD, rotations: int = 1,
                    seed: int = 0, rotation_kind: str = "auto") -> Comparison:
    """Universality tables from streamed moments (no further pass over data)."""
    check_settings(threshold, rotations, seed)
    if moments.count_ < 2:
        raise UniversalityError(f"need at least 2 tokens to correlate, the stream had {moments.count_}")
    units, pairs = universality_tables(moments, threshold=threshold, rotations=rotations, seed=seed,
                                       kind=rotation_kind)
    return Comparison(moments, units, pairs, threshold=threshold, rotations=rotations, seed=seed)
