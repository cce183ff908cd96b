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
    for note in result.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
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
        path = api.render_report(run_dir)
    except UniversalityError as error:
        _fail(str(error))
    console.print(f"report: {path}")


@app.command()
def summary(run_dir: Path = typer.Argument(..., help="a finished run directory")) -> None:
    """Print the per-unit-set summary of a finished run."""
    from . import api
    try:
        record = api.load_run(run_dir)
    except UniversalityError as error:
        _fail(str(error))
    _print_layers(record.comparison.layers)


@app.command()
def config() -> None:
    """Print the embedded default config (a starting point for your own)."""
    from .config import default_config_text
    sys.stdout.write(default_config_text())


groups_app = typer.Typer(no_args_is_help=True, help="Finite groups and their irreducible representations.")
app.add_typer(groups_app, name="groups")


@groups_app.command()
def characters(name: str = typer.Argument(..., help="a group: C12, D6, S5, A5, or a product like C6xC2")) -> None:
    """Print the character table: classes as columns (representative, size), irreps as rows (label, FS)."""
    from rich.markup import escape

    from .groups import character_table, frobenius_schur, irrep_labels, make_group
    try:
        group = make_group(name)
        values, labels, indicators = character_table(group), irrep_labels(group), frobenius_schur(group)
    except UniversalityError as error:
        _fail(str(error))
    cells = [[escape(label), str(indicator), *(_format_character(value) for value in row)]
             for label, indicator, row in zip(labels, indicators, values)]  # [irreps, 2 + classes]
    headers = ["irrep", "FS"] + [f"{escape(group.elements[members[0]])}\nsize {len(members)}"
                                 for members in group.classes]
    widths = [max(len(line) for text in [header] + [row[j] for row in cells] for line in text.split("\n"))
              for j, header in enumerate(headers)]  # natural width of every column: nothing wraps or truncates
    table = Table(title=f"characters of {group.name} (order {group.order}, {len(group.classes)} classes)")
    for j, header in enumerate(headers):
        table.add_column(header, justify="left" if j == 0 else "right", no_wrap=True)
    for row in cells:
        table.add_row(*row)
    out = Console()
    out.width = max(out.width, sum(widths) + 3 * len(widths) + 1)  # wider than the terminal rather than cropped
    out.print(table)


def _format_character(value: complex) -> str:
    """1, -0.618, 2i, -0.500+0.866i: integers exact, other parts to 3 decimals."""
    def number(x: float) -> str:
        return str(round(x)) if abs(x - round(x)) < 1e-9 else f"{x:.3f}"
    real, imag = value.real, value.imag
    if abs(imag) < 1e-9:
        return number(real)
    unit = {"1": "i", "-1": "-i"}.get(number(imag), number(imag) + "i")
    if abs(real) < 1e-9:
        return unit
    return number(real) + ("" if unit.startswith("-") else "+") + unit


if __name__ == "__main__":
    app()
