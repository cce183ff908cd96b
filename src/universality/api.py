"""The Python entry points the CLI calls: run an experiment over a run directory, re-render or
load a finished one. The steps themselves live in `pipeline/`.

Each step is skipped when its outputs exist for the same inputs (fingerprints), and the moment
stream checkpoints as it goes, so an interrupted run started again finishes with the same tables.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .compare import Comparison, layer_summary
from .config import AnyExperimentConfig, GroupExperimentConfig, PretrainedExperimentConfig, load_config
from .errors import UniversalityError
from .moments import load_moments, read_manifest
from .pipeline import Progress, RunResult, quiet, run_groups, run_language, run_pretrained
from ._rundir import read_json

__all__ = ["run_experiment", "RunResult", "render_report", "load_run", "Progress"]


def run_experiment(config: AnyExperimentConfig, *, runs_dir: str | Path = "runs",
                   on_progress: Progress = quiet) -> RunResult:
    """Run (or resume) the experiment `config` in `runs_dir/<config.name>`: a synthetic-language
    experiment, a group-composition one (`kind = "groups"`) or existing models (`kind = "pretrained"`)."""
    run = {GroupExperimentConfig: run_groups, PretrainedExperimentConfig: run_pretrained}.get(type(config), run_language)
    return run(config, runs_dir=runs_dir, on_progress=on_progress)


def render_report(run_dir: Path, comparison: Comparison, curves: dict[str, pd.DataFrame], *,
                  facts: dict[str, str], sections=None) -> Path:
    """Write plots and report.html for `comparison` into `run_dir`; `sections` default to those
    the run's saved tables call for (the group-composition ones)."""
    from .report import write_report
    config_path = Path(run_dir) / "config.toml"
    if sections is None:
        sections = _saved_sections(Path(run_dir), curves)
    return write_report(Path(run_dir), units=comparison.units, pairs=comparison.pairs,
                        layers=layer_summary(comparison.units), curves=curves,
                        threshold=comparison.threshold, title=f"Universal neurons: {Path(run_dir).name}",
                        config_text=config_path.read_text() if config_path.is_file() else "",
                        facts=facts, sections=sections)


def _saved_sections(run_dir: Path, curves: dict[str, pd.DataFrame]) -> list:
    """The report sections the run's saved analysis tables call for: neurons, heads, group irreps."""
    from .report import group_sections, head_sections, neuron_sections
    tables = {path.stem: pd.read_parquet(path) for path in sorted((run_dir / "tables").glob("*.parquet"))}
    sections = neuron_sections(tables["neurons"]) if "neurons" in tables else []
    if "heads" in tables:
        sections += head_sections(tables["heads"])
    if "group_seeds" in tables:
        config = load_config(run_dir / "config.toml")
        sections += group_sections(tables, key_threshold=config.analysis.key_threshold, curves=curves)
    return sections


def load_run(run_dir: str | Path) -> tuple[Comparison, dict[str, pd.DataFrame]]:
    """The comparison (tables and moments) and training curves saved in a finished run directory."""
    run_dir = Path(run_dir)
    tables = run_dir / "tables"
    if not (tables / "units.parquet").is_file() or read_manifest(run_dir / "moments") is None:
        raise UniversalityError(f"{str(run_dir)!r} holds no finished run (tables/ and moments/ missing); "
                                "run `univ run CONFIG` first")
    compare = load_config(run_dir / "config.toml").compare
    moments, _ = load_moments(run_dir / "moments")
    comparison = Comparison(moments, pd.read_parquet(tables / "units.parquet"),
                            pd.read_parquet(tables / "pairs.parquet"),
                            **compare.model_dump(exclude={"accumulate"}))
    curves = {}
    for metadata_path in sorted((run_dir / "models").glob("*/metadata.json")):
        metadata = read_json(metadata_path) or {}
        curve = pd.DataFrame(metadata.get("curve", []))
        if "epoch" in curve:  # group models log epochs and train/test loss
            curve = curve.rename(columns={"epoch": "step", "train_loss": "loss"})
        curves[metadata_path.parent.name] = curve
    return comparison, curves
