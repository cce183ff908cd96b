"""The report step: plots and report.html from what the run has in memory (the comparison, the
analysis tables, the training curves and the header facts); `load_run` reads a finished run back
into the same pieces, so `univ report` re-renders exactly what the run wrote.

| piece        | written to              | read back by `load_run`                          |
|--------------|-------------------------|--------------------------------------------------|
| comparison   | tables/{units,pairs,layers}.parquet + compare.json (settings) | the tables, with their own settings |
| tables       | tables/<name>.parquet (neurons, heads, group_*, features, assignment, training_*) | every parquet file in tables/ |
| facts        | tables/facts.json       | {name: text}, the report's header; group settings |
| contexts     | tables/token_rows.parquet, vocab.parquet | the streamed token rows [rows, pos] and each id's text |
| curves       | models/*/metadata.json  | training curves                                  |
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .._rundir import read_json, write_text_atomic
from ..compare import Comparison
from ..errors import UniversalityError
from ..moments import TopActivations, load_moments, read_manifest
from ..report import (algorithm_sections, calibration_sections, circuit_sections, group_sections, head_sections,
                      neuron_sections, posterior_sections, sae_sections, similarity_sections, steering_sections,
                      training_sections, write_site)
from ._steps import saved_tables

__all__ = ["RunRecord", "report_step", "load_run", "context_tables"]

_UNIT_FACTS = {"neurons": ["best_feature_set", "best_feature", "feature_tokens", "variance_reduction", "role"],
               "group_units": ["irrep", "share"]}  # columns shown on each unit's page
_CONTEXT = 12  # tokens before the firing one shown on unit pages


@dataclass
class RunRecord:
    """Everything the report shows, in memory."""

    comparison: Comparison
    curves: dict[str, pd.DataFrame]  # model -> (step, loss)
    facts: dict[str, str]  # header facts, in order
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # neurons, heads, group_*, features ...
    key_threshold: float | None = None  # group runs: the key-irrep cut the group tables were made with
    generalised_accuracy: float = 0.99  # group runs: seeds below this final test accuracy never generalised
    include_ungeneralised: bool = False  # group runs: keep such seeds in the claims
    top_activations: object | None = None  # moments.TopActivations of the streamed unit sets
    notes: list[str] = field(default_factory=list)  # one line each: analyses left out, seeds flagged
    # pipeline._posterior.Predictions: the models and evaluation data the seeds step streams (a run in
    # progress only; None when the models give no next-token distributions, and in a run read back)
    predictions: object | None = None
    # the reservoir of token rows the pass kept, {model: {unit_set: float32 [rows, units]}} (similarity step;
    # None when none was kept, and in a run read back)
    reservoir: dict | None = None


def context_tables(token_rows, vocab: list[str] | None) -> dict[str, pd.DataFrame]:
    """The streamed token rows [rows, pos] (ids) and each id's text, as tables the report reads contexts
    from (`token_rows` columns p0, p1, ...; `vocab` column text; ids as text when `vocab` is None)."""
    rows = pd.DataFrame(token_rows.numpy() if hasattr(token_rows, "numpy") else token_rows)
    texts = list(vocab) if vocab is not None else [str(t) for t in range(int(rows.to_numpy().max()) + 1)]
    return {"token_rows": rows.rename(columns=lambda c: f"p{c}"), "vocab": pd.DataFrame({"text": texts})}


def report_step(run_dir: Path, record: RunRecord, *, run_name: str | None = None) -> Path:
    """Save the header facts beside the tables and write the report site into `run_dir` (a run in
    progress writes it into its staging directory: `run_name` is the run's own name for the title)."""
    settings = {"facts": record.facts, "notes": record.notes, "key_threshold": record.key_threshold,
                "generalised_accuracy": record.generalised_accuracy,
                "include_ungeneralised": record.include_ungeneralised}
    write_text_atomic(run_dir / "tables" / "facts.json", json.dumps(settings, indent=1))
    tables = record.tables
    sections = []
    if "neurons" in tables:
        sections += neuron_sections(tables["neurons"])
    if "heads" in tables:
        sections += head_sections(tables["heads"])
    if "group_seeds" in tables:
        sections += group_sections(tables, key_threshold=record.key_threshold, curves=record.curves,
                                   generalised_accuracy=record.generalised_accuracy,
                                   include_ungeneralised=record.include_ungeneralised)
    comparison = record.comparison
    sections = calibration_sections(comparison.units) + sections
    sections += circuit_sections(tables) + algorithm_sections(tables)
    if "steering" in tables:
        sections += steering_sections(tables["steering"])
    if "similarity" in tables:
        sections += similarity_sections(tables["similarity"])
    if "seeds" in tables:
        sections += posterior_sections(tables["seeds"], tables["seed_kl"], tables.get("seed_clusters"))
    live = comparison.units[~comparison.units.dead]
    sections += sae_sections(tables, float(live.universal.mean()) if len(live) else float("nan"))
    sections += training_sections(tables, record.curves)
    config_path = run_dir / "config.toml"
    return write_site(run_dir, units=comparison.units, pairs=comparison.pairs, layers=comparison.layers,
                      settings={"threshold": comparison.threshold, "rotations": comparison.rotations,
                                "seed": comparison.seed},
                      curves=record.curves, title=f"Universal neurons: {run_name or run_dir.name}",
                      config_text=config_path.read_text() if config_path.is_file() else "",
                      facts={**record.facts, **({"notes": " ".join(record.notes)} if record.notes else {})},
                      sections=sections, top_activations=record.top_activations,
                      token_text=_token_text(tables.get("token_rows"), tables.get("vocab")),
                      unit_facts=_unit_facts(tables), group_seeds=tables.get("group_seeds"),
                      generalised_accuracy=record.generalised_accuracy,
                      include_ungeneralised=record.include_ungeneralised, features=tables.get("features"))


def _unit_facts(tables: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """Per (model, unit_set, unit): the family and role (neurons table) or irrep (group runs)."""
    frames = []
    for name, columns in _UNIT_FACTS.items():
        if name in tables and "unit_set" in tables[name]:
            table = tables[name]
            frames.append(table[["model", "unit_set", "unit", *[c for c in columns if c in table]]])
    return pd.concat(frames, ignore_index=True) if frames else None


def _token_text(token_rows: pd.DataFrame | None, vocab: pd.DataFrame | None):
    """`global token index -> (token strings, position of that token)` over the streamed rows, or None."""
    if token_rows is None or vocab is None:
        return None
    rows, text = token_rows.to_numpy(), vocab.text.tolist()

    def context(index: int) -> tuple[list[str], int]:
        row, position = divmod(int(index), rows.shape[1])
        start = max(0, position - _CONTEXT)
        return [text[t] for t in rows[row, start:position + 2]], position - start
    return context


def load_run(run_dir: str | Path) -> RunRecord:
    """The record of a finished run directory: the comparison with the settings stored beside its
    tables, the analysis tables, the header facts and the training curves."""
    run_dir = Path(run_dir)
    tables_dir = run_dir / "tables"
    saved = read_json(tables_dir / "compare.json")
    if not saved or read_manifest(run_dir / "moments") is None:
        raise UniversalityError(f"{str(run_dir)!r} holds no finished run (tables/compare.json or moments/ missing); "
                                "run `univ run CONFIG` first")
    tables = {}
    for manifest in sorted(tables_dir.glob("*.json")):
        if manifest.stem == "facts":
            continue
        step = saved_tables(tables_dir, manifest.stem)
        if step is None:
            raise UniversalityError(f"{str(manifest)!r} lists tables that are missing or damaged; run "
                                    "`univ run` with the run's config.toml to recompute them")
        tables.update(step)
    moments, manifest = load_moments(run_dir / "moments")
    top = TopActivations.from_state_dict(manifest["companions"], moments.layout) if manifest["companions"] else None
    settings = saved["settings"]
    comparison = Comparison(moments, tables.pop("units"), tables.pop("pairs"), threshold=settings["threshold"],
                            rotations=settings["rotations"], seed=settings["seed"])
    tables.pop("layers", None)
    header = read_json(tables_dir / "facts.json") or {}
    curves = {}
    for metadata_path in sorted((run_dir / "models").glob("*/metadata.json")):
        metadata = read_json(metadata_path) or {}
        curve = pd.DataFrame(metadata.get("curve", []))
        if "epoch" in curve:  # group models log epochs and train/test loss
            curve = curve.rename(columns={"epoch": "step", "train_loss": "loss"})
        curves[metadata_path.parent.name] = curve
    return RunRecord(comparison, curves, header.get("facts", {}), tables, header.get("key_threshold"),
                     header.get("generalised_accuracy", 0.99), header.get("include_ungeneralised", False),
                     top_activations=top, notes=header.get("notes", []))
