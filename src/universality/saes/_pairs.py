"""One row per (SAE pair, level) summarising a `match` table, beside its nulls: the rows of
`tables/sae_pairs.parquet` for the levels read from weights. The functional level (latent
activations) and `fvu_swap` are added by the pipeline; `summarize_match` takes any table with
`match`'s columns, so the functional level's rows can come from it too.

| column                 | meaning                                                                       |
|------------------------|-------------------------------------------------------------------------------|
| `sae_a`, `sae_b`       | the SAEs' names                                                               |
| `level`                | "direct" (decoders as they are), "linear" (a mapped by Procrustes), ...       |
| `latents_a`, `latents_b`, `d_in`, `threshold` | the pair's widths and the cosine a shared latent needs |
| `encoders`             | whether shared also needed the encoders' assignment to agree                  |
| `matching`             | "hungarian" or "sparse top-k=16" (`match`)                                    |
| `shared`               | latents of a shared with b (`match`'s `shared`)                               |
| `shared_fraction`      | `shared / latents_a`                                                          |
| `mean_mcs`, `median_mcs` | over a's live latents                                                       |
| `mean_hungarian_cos`   | over a's assigned latents                                                     |
| `coverage_a`, `coverage_b` | share of a's / b's latents with MCS >= threshold to the other (`width_coverage`) |
| `null_mean_mcs`, `null_shared_fraction` | the same for a against a random dictionary as wide as b (decoders only) |
| `analytic_null_mcs`    | `random_mcs_expectation(d_in, latents_b)`                                     |

One random dictionary serves both levels: it is isotropic, so a mapped by an orthogonal R against it
scores as a against it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import UniversalityError, short_repr
from ._linear import match_linear
from ._match import CANDIDATES, DENSE_LIMIT, match
from ._null import random_decoder, random_mcs_expectation
from ._sae import SAE

__all__ = ["summarize_match", "pair_matches", "compare_sae_pair", "PAIR_COLUMNS"]

PAIR_COLUMNS = ["sae_a", "sae_b", "level", "latents_a", "latents_b", "d_in", "threshold", "encoders", "matching",
                "shared", "shared_fraction", "mean_mcs", "median_mcs", "mean_hungarian_cos", "coverage_a", "coverage_b",
                "null_mean_mcs", "null_shared_fraction", "analytic_null_mcs"]


def summarize_match(matches: pd.DataFrame, *, sae_a: str, sae_b: str, level: str | None = None,
                    null: pd.DataFrame | None = None, analytic_null_mcs: float = math.nan) -> dict:
    """One row (a dict keyed by PAIR_COLUMNS) from a `match` table and, optionally, the `match` table
    of a against a random dictionary (`null`). `level` defaults to `matches.attrs["level"]`; values
    the table's attrs do not hold are NaN.

    >>> import torch
    >>> row = summarize_match(match(torch.eye(3), torch.eye(3)), sae_a="x", sae_b="y")
    >>> row["level"], row["shared_fraction"], row["mean_mcs"]
    ('direct', 1.0, 1.0)
    """
    missing = [c for c in ("mcs", "hungarian_cos", "shared") if c not in matches.columns]
    if missing:
        raise UniversalityError(f"matches lacks column(s) {', '.join(missing)}; pass a table from saes.match")
    attrs = matches.attrs
    level = attrs.get("level") if level is None else level
    if not isinstance(level, str) or not level:
        raise UniversalityError(f"level must name the level (e.g. 'direct'), got {short_repr(level)}")
    null_row = {} if null is None else {"null_mean_mcs": _mean(null["mcs"]),
                                        "null_shared_fraction": float(null["shared"].mean())}
    row = {"sae_a": sae_a, "sae_b": sae_b, "level": level, "latents_a": len(matches),
           "latents_b": attrs.get("latents_b", math.nan), "d_in": attrs.get("d_in", math.nan),
           "threshold": attrs.get("threshold", math.nan), "encoders": "hungarian_partner_enc" in matches.columns,
           "matching": attrs.get("matching", ""), "shared": int(matches["shared"].sum()),
           "shared_fraction": float(matches["shared"].mean()), "mean_mcs": _mean(matches["mcs"]),
           "median_mcs": _median(matches["mcs"]), "mean_hungarian_cos": _mean(matches["hungarian_cos"]),
           "coverage_a": attrs.get("coverage_a", math.nan), "coverage_b": attrs.get("coverage_b", math.nan),
           "null_mean_mcs": math.nan, "null_shared_fraction": math.nan, "analytic_null_mcs": float(analytic_null_mcs),
           **null_row}
    return {column: row[column] for column in PAIR_COLUMNS}


def pair_matches(sae_a: SAE, sae_b: SAE, *, cross_moment=None, threshold: float = 0.7, encoders: bool = True,
                 seed: int = 0, dense_limit: int = DENSE_LIMIT, candidates: int = CANDIDATES
                 ) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, float]:
    """The `match` tables of a pair's weight levels, {"direct": ..., "linear": ... (given `cross_moment`
    [d_in_a, d_in_b], the centred cross-moment of the two spaces, a's as rows)}; the null, a's decoder
    against a random dictionary as wide as b from `seed`; and `random_mcs_expectation` for b's width (NaN
    at d_in 1). `encoders`: shared also needs the encoders' assignment to agree."""
    for name, sae in (("sae_a", sae_a), ("sae_b", sae_b)):
        if not isinstance(sae, SAE):
            raise UniversalityError(f"{name} must be an SAE (universality.saes.SAE), got {type(sae).__name__}")
    options = dict(threshold=threshold, dense_limit=dense_limit, candidates=candidates)
    enc = dict(encoder_a=sae_a.W_enc, encoder_b=sae_b.W_enc) if encoders else {}
    tables = {"direct": match(sae_a.W_dec, sae_b.W_dec, **enc, **options)}
    if cross_moment is not None:
        tables["linear"] = match_linear(sae_a.W_dec, sae_b.W_dec, cross_moment, **enc, **options)
    null = match(sae_a.W_dec, random_decoder(sae_b.latents, sae_b.d_in, seed=seed), **options)
    analytic = random_mcs_expectation(sae_b.d_in, sae_b.latents) if sae_b.d_in >= 2 else math.nan
    return tables, null, analytic


def compare_sae_pair(sae_a: SAE, sae_b: SAE, *, name_a: str = "a", name_b: str = "b", cross_moment=None,
                     threshold: float = 0.7, encoders: bool = True, seed: int = 0, dense_limit: int = DENSE_LIMIT,
                     candidates: int = CANDIDATES) -> pd.DataFrame:
    """PAIR_COLUMNS rows for the "direct" level and, given `cross_moment` [d_in_a, d_in_b] (the centred
    cross-moment of the two spaces the SAEs read, a's as rows; `saes._linear`), the "linear" level.
    `encoders`: shared also needs the encoders' assignment to agree (default True). The null is a
    random dictionary as wide as b from `seed`, against a's decoder (`pair_matches`)."""
    tables, null, analytic = pair_matches(sae_a, sae_b, cross_moment=cross_moment, threshold=threshold,
                                          encoders=encoders, seed=seed, dense_limit=dense_limit, candidates=candidates)
    rows = [summarize_match(table, sae_a=name_a, sae_b=name_b, level=level, null=null, analytic_null_mcs=analytic)
            for level, table in tables.items()]
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def _mean(values) -> float:
    """Mean of the finite values (NaN when none), without numpy's empty-slice warning."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


def _median(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else math.nan
