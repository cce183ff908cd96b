"""`univ`: the command line. Thin: parse, call `api`, print. Bad input exits 2 with one line."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import UniversalityError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Find the units that independently trained networks share.")
console = Console(stderr=True)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _run(config_path: Optional[Path], runs_dir: Path) -> None:
    from . import api
    from .config import load_config
    started = time.perf_counter()
    try:
        config = load_config(config_path)
        tasks = {}
        with Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as bars:
            def on_progress(task: str, done: int, total: int) -> None:
                if task not in tasks:
                    tasks[task] = bars.add_task(task, total=total)
                bars.update(tasks[task], completed=done, total=total)
            result = api.run_experiment(config, runs_dir=runs_dir, on_progress=on_progress)
    except UniversalityError as error:
        _fail(str(error))
    _print_layers(result.comparison.layers)
    units = result.comparison.units
    live = int((~units["dead"]).sum())
    universal = int(units["universal"].sum())
    console.print(f"{universal} of {live} live units universal ({100 * universal / max(live, 1):.1f}%) "
                  f"at excess correlation > {result.comparison.threshold}; "
                  f"{time.perf_counter() - started:.0f} s")
    console.print(f"report: {result.report}")


def _print_layers(layers) -> None:
    table = Table(title="universal units per unit set")
    for column in ("model", "unit_set", "units", "dead", "universal", "pct_universal", "median_excess"):
        table.add_column(column, justify="left" if column in ("model", "unit_set") else "right")
    for row in layers.itertuples(index=False):
        table.add_row(row.model, row.unit_set, str(row.units), str(row.dead), str(row.universal),
                      f"{row.pct_universal:.1f}", f"{row.median_excess:.3f}")
    console.print(table)


@app.command()
def run(config: Path = typer.Argument(..., help="experiment TOML"),
        runs_dir: Path = typer.Option(Path("runs"), help="parent of the run directory <runs-dir>/<name>")) -> None:
    """Train the seeds, stream activations once, compare, and write the report (resumes)."""
    _run(config, runs_dir)


@app.command()
def demo(runs_dir: Path = typer.Option(Path("runs"), help="parent of the run directory")) -> None:
    """Run the embedded default experiment (4 seeds of a tiny transformer) into runs/demo."""
    _run(None, runs_dir)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a finished run directory")) -> None:
    """Re-render plots and report.html from a run's saved tables."""
    from . import api
    try:
        comparison, curves = api.load_run(run_dir)
        path = api.render_report(run_dir, comparison, curves, facts={"re-rendered from": str(run_dir)})
    except UniversalityError as error:
        _fail(str(error))
    console.print(f"report: {path}")


@app.command()
def summary(run_dir: Path = typer.Argument(..., help="a finished run directory")) -> None:
    """Print the per-unit-set summary of a finished run."""
    from . import api
    try:
        comparison, _ = api.load_run(run_dir)
    except UniversalityError as error:
        _fail(str(error))
    _print_layers(comparison.layers)


@app.command()
def config() -> None:
    """Print the embedded default config (a starting point for your own)."""
    from .config import default_config_text
    sys.stdout.write(default_config_text())


if __name__ == "__main__":
    app()
