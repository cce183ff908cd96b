"""The Python entry points the CLI calls, a thin facade over `pipeline/`: run an experiment into
a run directory, load a finished one, re-render its report.

A run works in a staging directory and replaces the finished run of its name only when it
succeeds; each step is skipped when its outputs exist intact for the same inputs, and the moment
stream checkpoints as it goes, so an interrupted run started again finishes with the same tables.
"""

from __future__ import annotations

from pathlib import Path

from .config import AnyExperimentConfig, GroupExperimentConfig, PretrainedExperimentConfig
from .pipeline import (Progress, RunRecord, RunResult, experiment_plan, load_run, quiet, report_step, run_groups,
                       run_language, run_pretrained)

__all__ = ["run_experiment", "RunResult", "RunRecord", "render_report", "load_run", "Progress", "plan_experiment"]


def run_experiment(config: AnyExperimentConfig, *, runs_dir: str | Path = "runs",
                   on_progress: Progress = quiet) -> RunResult:
    """Run (or resume) the experiment `config` in `runs_dir/<config.name>`: a synthetic-language
    experiment, a group-composition one (`kind = "groups"`) or existing models (`kind = "pretrained"`)."""
    run = {GroupExperimentConfig: run_groups, PretrainedExperimentConfig: run_pretrained}.get(type(config), run_language)
    return run(config, runs_dir=runs_dir, on_progress=on_progress)


def render_report(run_dir: str | Path) -> Path:
    """Re-render plots and report.html of a finished run from its saved tables, settings and facts."""
    return report_step(Path(run_dir), load_run(run_dir))


def plan_experiment(config: AnyExperimentConfig):
    """(`moments.Plan`, {fact: text}) of a run of `config` under its `[scale] memory_budget`: passes,
    memory per pass, GFLOP per token and projected times, without training or streaming anything."""
    return experiment_plan(config)
