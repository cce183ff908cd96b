"""Report section of a run's SAEs (`tables/saes.parquet`, `sae_pairs`, `sae_latents`, `sae_features`):
each SAE's quality, the shared fraction of every pair at the three levels beside its null, decoder MCS
histograms against a random dictionary, activation correlation against decoder cosine, and which
latents align with the ground-truth features."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._html import ReportSection
from ._plots import _figure, _png

__all__ = ["sae_sections"]

_LEVELS = ("direct", "linear", "functional")


def sae_sections(tables: dict[str, pd.DataFrame], neuron_universal_fraction: float) -> list[ReportSection]:
    """One section; none when the run trained no SAE."""
    if "saes" not in tables:
        return []
    saes, pairs, latents = tables["saes"], tables["sae_pairs"], tables["sae_latents"]
    features = tables.get("sae_features")
    summary = (pairs.assign(pair=np.where(pairs.same_model, "same model", "across models"))
               .groupby(["pair", "level"], sort=False)
               .agg(pairs=("shared_fraction", "size"), shared_fraction=("shared_fraction", "mean"),
                    mean_score=("mean_mcs", "mean"), null_mean=("null_mean_mcs", "mean"),
                    analytic_null=("analytic_null_mcs", "mean"), fvu_swap=("fvu_swap", "mean")).reset_index())
    direct = summary[summary.level == "direct"].shared_fraction
    text = (f"{len(saes)} SAEs on {saes.unit_set.iloc[0]} ({saes.model.nunique()} models x {saes.width.nunique()} "
            f"width(s) x {saes.seed.nunique()} seed(s)). Shared latents (both Hungarian assignments agree and both "
            f"cosines >= {pairs.threshold.iloc[0]:.2f}): {_share(direct)} of an SAE's latents on average at the "
            f"direct level, against {neuron_universal_fraction:.1%} of neurons universal in this run. The functional "
            "level counts latents whose activations correlate at or above the same threshold with a latent of the "
            "other SAE; its null is the rotation baseline of the universality engine. Overlap near the null "
            "means nothing.")
    columns = ["sae", "width", "seed", "fvu", "l0", "dead_latents", "ce_increase", "universal_fraction",
               *(["calibrated_fraction"] if "calibrated_fraction" in saes else []), "train_seconds"]
    section_tables = [
        ("Each SAE: fraction of variance unexplained, mean active latents per token, latents never active on the "
         "evaluation rows, the loss increase with it spliced in (nats), and the share of its latents universal "
         "across the other SAEs (the paper's rule; calibrated)", saes[columns]),
        ("Shared fraction per level, averaged over SAE pairs on one model and across models, with the mean score "
         "(MCS; the functional level's max activation correlation), its null and the swap FVU", summary),
        ("Every pair (sae_a against sae_b; linear only across models)",
         pairs[["sae_a", "sae_b", "level", "shared_fraction", "mean_mcs", "null_mean_mcs", "coverage_a",
                "coverage_b", "fvu_swap"]])]
    widths = pairs[(pairs.level == "direct") & (pairs.latents_a < pairs.latents_b)]
    if len(widths):
        section_tables.append((
            "Across widths (direct level): share of the narrower SAE's latents whose MCS to the wider one is >= the "
            "threshold (small_covered), and of the wider one's to the narrower (large_covered)",
            widths.assign(pair=np.where(widths.same_model, "same model", "across models"))
            .groupby(["pair", "latents_a", "latents_b"])
            .agg(pairs=("sae_a", "size"), small_covered=("coverage_a", "mean"), large_covered=("coverage_b", "mean"))
            .reset_index()))
    if features is not None and features.best_feature_set.notna().any():
        section_tables.append(("Latents by their best ground-truth feature (variance reduction >= 0.5), shared "
                               "against at least one other SAE or not", _feature_alignment(features, latents)))
    return [ReportSection(
        "Do the SAEs learn universal features?", text=text, tables=section_tables,
        figures=[("sae_mcs.png", "Decoder MCS of live latents to the other SAE, against a random dictionary of the "
                  "same width (dashed: the analytic expectation for random directions)", _mcs_histograms(pairs, latents)),
                 ("sae_act_vs_cos.png", "Each latent's max activation correlation with the other SAE against its "
                  "decoder MCS", _scatter(latents))])]


def _share(values: pd.Series) -> str:
    return "–" if not len(values) else f"{values.mean():.1%}"


def _feature_alignment(features: pd.DataFrame, latents: pd.DataFrame) -> pd.DataFrame:
    """Per best feature set: latents with VR >= 0.5, and how many of them are shared with some other SAE."""
    shared = latents.groupby(["sae", "latent"]).shared.any().rename("shared_somewhere").reset_index()
    aligned = features[features.variance_reduction >= 0.5].merge(shared, on=["sae", "latent"], how="left")
    return (aligned.groupby("best_feature_set")
            .agg(latents=("latent", "size"), shared=("shared_somewhere", "sum"),
                 mean_variance_reduction=("variance_reduction", "mean"),
                 universal=("universal", "sum")).reset_index())


def _mcs_histograms(pairs: pd.DataFrame, latents: pd.DataFrame) -> bytes:
    """A PNG: the direct-level MCS of every live latent (active on the evaluation rows), split by same model /
    across models."""
    latents = latents[latents.frequency > 0]
    model_of = dict(zip(pairs.sae_a, pairs.model_a))
    same = latents.sae.map(model_of) == latents.other_sae.map(model_of)
    fig = _figure(8, 3)
    direct = pairs[pairs.level == "direct"]
    for index, (label, keep) in enumerate((("same model (SAE seeds)", same), ("across models", ~same))):
        axes = fig.add_subplot(1, 2, index + 1)
        values = latents.mcs_dec[keep].dropna()
        if len(values):
            axes.hist(values, bins=40, range=(0, 1), color="tab:blue", alpha=0.8, label="MCS")
        rows = direct[direct.same_model == (index == 0)]
        if len(rows):
            axes.axvline(rows.null_mean_mcs.mean(), color="tab:red", label="random dictionary (mean)")
            axes.axvline(rows.analytic_null_mcs.mean(), color="black", linestyle="--", label="analytic")
        axes.set_title(label, fontsize=9)
        axes.set_xlabel("max cosine similarity of decoder rows")
        axes.legend(fontsize=7)
    return _png(fig)


def _scatter(latents: pd.DataFrame) -> bytes:
    """A PNG: activation correlation against decoder MCS, one point per (latent, other SAE), subsampled."""
    rows = latents[["mcs_dec", "act_corr"]].dropna()
    if len(rows) > 20000:
        rows = rows.sample(20000, random_state=0)
    fig = _figure(4.5, 4)
    axes = fig.add_subplot()
    axes.scatter(rows.mcs_dec, rows.act_corr, s=3, alpha=0.3)
    axes.set_xlabel("decoder MCS")
    axes.set_ylabel("max activation correlation")
    axes.set_xlim(0, 1)
    axes.set_ylim(-0.05, 1)
    return _png(fig)
