"""The report step: plots and report.html from what the run has in memory (the comparison, the
analysis tables, the training curves and the header facts); `load_run` reads a finished run back
into the same pieces, so `univ report` re-renders exactly what the run wrote.

| piece        | written to              | read back by `load_run`                          |
|--------------|-------------------------|--------------------------------------------------|
| comparison   | tables/{units,pairs,layers}.parquet + compare.json (settings) | the tables, with their own settings |
| tables       | tables/<name>.parquet (neurons, heads, group_*) | every parquet file in tables/ |
| facts        | tables/facts.json       | {name: text}, the report's header                |
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
from ..moments import load_moments, read_manifest
from ..report import group_sections, head_sections, neuron_sections, write_report
from ._steps import saved_tables

__all__ = ["RunRecord", "report_step", "load_run"]

_COMPARISON_TABLES = ("units", "pairs", "layers")


@dataclass
class RunRecord:
    """Everything the report shows, in memory."""

    comparison: Comparison
    curves: dict[str, pd.DataFrame]  # model -> (step, loss)
    facts: dict[str, str]  # header facts, in order
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # neurons, heads, group_* (those present)
    key_threshold: float | None = None  # group runs: the key-irrep cut the group tables were made with


def report_step(run_dir: Path, record: RunRecord) -> Path:
    """Save the header facts beside the tables and write plots/ and report.html into `run_dir`."""
    write_text_atomic(run_dir / "tables" / "facts.json",
                      json.dumps({"facts": record.facts, "key_threshold": record.key_threshold}, indent=1))
    sections = []
    if "neurons" in record.tables:
        sections += neuron_sections(record.tables["neurons"])
    if "heads" in record.tables:
        sections += head_sections(record.tables["heads"])
    if "group_seeds" in record.tables:
        sections += group_sections(record.tables, key_threshold=record.key_threshold, curves=record.curves)
    comparison = record.comparison
    config_path = run_dir / "config.toml"
    return write_report(run_dir, units=comparison.units, pairs=comparison.pairs, layers=comparison.layers,
                        curves=record.curves, threshold=comparison.threshold,
                        title=f"Universal neurons: {run_dir.name}",
                        config_text=config_path.read_text() if config_path.is_file() else "",
                        facts=record.facts, sections=sections)


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
    moments, _ = load_moments(run_dir / "moments")
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
    return RunRecord(comparison, curves, header.get("facts", {}), tables, header.get("key_threshold"))
