"""One run of any experiment kind, from a checked config to a committed run directory.

1. A finished run of the same name made from the same config is returned as it is, without
   writing anything (so a read-only finished run can be run again), when its files are intact.
2. Otherwise the run stages (`open_run`), writes the resolved config, runs the kind's steps
   (`body(run_dir, times) -> RunRecord`) in the staging directory, then the steps every kind shares,
   from the compared state (universal features and the one-to-one assignment, `_features`;
   representation similarity, `_similarity`; seeds as posterior samples, `_posterior`), writes the report, and commits.
   With `[scale] backend = "ray"` Ray is connected first, so an address that does not answer is one
   line and nothing is written; the session lasts the run.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from .._rundir import fingerprint, resolved_config_text, write_text_atomic
from .._threads import resolve_threads
from ..compare._sketch import sketch_rules
from ..distributed import ray_session
from ..errors import UniversalityError
from ._features import feature_step
from ._posterior import posterior_step
from ._report import RunRecord, load_run, report_step
from ._run_directory import finished_run_print, open_run
from ._similarity import compared_print, similarity_step
from ._steps import RunResult, StepTimes

__all__ = ["execute", "run_fingerprint", "trained_inputs", "pinned_threads"]


def pinned_threads(train_config):
    """`train_config` with `threads` resolved once (`"auto"`: the idle cores), so training uses, and the
    progress line names, one number."""
    return train_config.model_copy(update={"threads": resolve_threads(train_config.threads)})


def trained_inputs(train_config) -> dict:
    """The training settings that define a trained model: all but `threads`, which only changes the
    float rounding of the result, so changing it never retrains a seed; `checkpoints` only when some are
    kept (none kept is what a model saved before the setting existed holds: it is not retrained), and the
    indirect-object mix (`ioi_fraction`, `ioi`) only when it is on, for the same reason."""
    settings = train_config.model_dump(exclude={"threads"})
    if settings.get("checkpoints") == 0:
        del settings["checkpoints"]
    if settings.get("ioi_fraction") == 0:  # no task mixed in: what a model saved before the setting holds
        settings.pop("ioi_fraction")
        settings.pop("ioi", None)
    return settings


def run_fingerprint(config) -> str:
    """A fingerprint of everything that defines a run's results (the config without `threads`, nor where
    the passes stream: `[scale]` backend, address and workers change only the float rounding)."""
    settings = config.model_dump(mode="json", exclude={"threads"})  # a pretrained run's; training's below
    if "train" in settings:
        settings["train"] = trained_inputs(config.train)
    settings["scale"] = config.scale.model_dump(mode="json", exclude={"backend", "address", "workers"})
    if config.scale.mode == "sketch":
        settings["scale"]["rules"] = sketch_rules()
    return fingerprint(run=settings)


def finished_result(config, runs_dir: str | Path) -> RunResult | None:
    """The finished run `runs_dir/<name>` when it was made from this config and reads back intact."""
    run_dir = Path(runs_dir) / config.name
    if finished_run_print(runs_dir, config.name) != run_fingerprint(config):
        return None
    try:
        record = load_run(run_dir)
    except (UniversalityError, OSError, ValueError, KeyError):
        return None  # damaged: run again, which recomputes what is damaged
    return RunResult(run_dir, record.comparison, run_dir / "report.html", {}, record.facts, record.notes)


def execute(config, runs_dir: str | Path, body: Callable[[Path, StepTimes], RunRecord]) -> RunResult:
    """Run `body` in the staging directory of `runs_dir/<config.name>` and commit (module docstring)."""
    finished = finished_result(config, runs_dir)
    if finished is not None:
        return finished
    scale = config.scale
    with ray_session(scale.address, scale.workers) if scale.backend == "ray" else nullcontext():
        run = open_run(runs_dir, config.name)
        times = StepTimes()
        try:
            write_text_atomic(run.work / "config.toml", resolved_config_text(config.model_dump()))
            record = body(run.work, times)
            with times("features"):
                record = feature_step(run.work, record)
            with times("similarity"):
                similarity, notes = similarity_step(run.work, record.comparison, config.similarity,
                                                    inputs_print=compared_print(run.work), rows=record.reservoir)
            record.notes += notes
            if similarity is not None:
                record.tables["similarity"] = similarity
            with times("seeds"):
                record = posterior_step(run.work, record, config.posterior, compared_print(run.work))
            with times("report"):
                record.facts["step times (s)"] = times.text()
                report_step(run.work, record, run_name=run.final.name)
            run.commit(run_fingerprint(config))
        finally:
            run.release()
    return RunResult(run.final, record.comparison, run.final / "report.html", times.seconds, record.facts, record.notes)
