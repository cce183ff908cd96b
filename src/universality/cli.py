"""`univ`: the command line. Thin: parse, call `api`, print. Bad input exits 2 with one line."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ._config_checks import one_line
from .errors import UniversalityError, short_repr

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Find the units that independently trained networks share.")
console = Console(stderr=True, markup=False, highlight=False)  # user strings are never read as markup
LAYER_COLUMNS = ("model", "unit_set", "units", "dead", "universal", "pct_universal", "median_excess")


def _fail(message: str, code: int = 2) -> NoReturn:
    """Print `message` as one plain line on stderr and exit with `code`."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    raise typer.Exit(code)


@contextmanager
def _user_errors() -> Iterator[None]:
    """The CLI edge: a bad input, a file-system fault (read-only, disk full, permission) or Ctrl-C is one
    plain line on stderr, exit 2 (130 for Ctrl-C), never a traceback; warnings print as one line too."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            yield
        except UniversalityError as error:
            _fail(str(error))
        except OSError as error:
            _fail(_describe_os_error(error))
        except KeyboardInterrupt:
            _fail("interrupted; run the same command again to resume where it stopped", 130)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(f"warning: {one_line(str(message))}\n")


def _describe_os_error(error: OSError) -> str:
    """"<reason> ('<file>'); check ..." from an OSError (disk full, read-only, permission, not a directory)."""
    files = " -> ".join(short_repr(str(f)) for f in (error.filename, error.filename2) if f is not None)
    reason = (error.strerror or str(error) or type(error).__name__) + (f" ({files})" if files else "")
    return f"{reason}; check the path, its permissions and the free disk space"


def _run(config_path: Optional[Path], runs_dir: Path) -> None:
    from .config import load_config
    started = time.perf_counter()
    with _user_errors():
        config = load_config(config_path)  # before importing the pipeline: a bad config fails fast
        from . import api
        tasks = {}
        with Progress(TextColumn("{task.description:<20}", markup=False), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=False) as bars:
            def on_progress(task: str, done: int, total: int) -> None:
                if task not in tasks:
                    tasks[task] = bars.add_task(task, total=total)
                bars.update(tasks[task], completed=done, total=total)
            result = api.run_experiment(config, runs_dir=runs_dir, on_progress=on_progress)
    _print_layers(result.comparison.layers, console)
    for note in result.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    units = result.comparison.units
    live = int((~units["dead"]).sum())
    universal = int(units["universal"].sum())
    console.print(f"{universal} of {live} live units universal ({100 * universal / max(live, 1):.1f}%) "
                  f"at excess correlation > {result.comparison.threshold}; "
                  f"{time.perf_counter() - started:.0f} s")
    console.print(f"report: {result.report}")


def _print_layers(layers, out: Console, *, as_csv: bool = False) -> None:
    """The per-unit-set table: CSV when asked, full plain text when `out` is not a terminal (never cut
    at 80 columns), a rich table on a terminal."""
    if as_csv:
        out.file.write(layers[list(LAYER_COLUMNS)].to_csv(index=False))
        return
    rows = [[str(row.model), str(row.unit_set), str(row.units), str(row.dead), str(row.universal),
             f"{row.pct_universal:.1f}", f"{row.median_excess:.3f}"] for row in layers.itertuples(index=False)]
    if not out.is_terminal:
        widths = [max(len(text) for text in [column] + [row[j] for row in rows])
                  for j, column in enumerate(LAYER_COLUMNS)]
        for line in [list(LAYER_COLUMNS)] + rows:
            cells = [text.ljust(w) if j < 2 else text.rjust(w) for j, (text, w) in enumerate(zip(line, widths))]
            out.file.write("  ".join(cells).rstrip() + "\n")
        return
    table = Table(title="universal units per unit set")
    for column in LAYER_COLUMNS:
        table.add_column(column, justify="left" if column in ("model", "unit_set") else "right")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    out.print(table)


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
def plan(config: Path = typer.Argument(..., help="experiment TOML")) -> None:
    """Print the passes a run will make under its [scale] memory_budget, their memory and cost, and the
    projected time, before anything is trained or streamed."""
    from . import api
    from .config import load_config
    with _user_errors():
        experiment = load_config(config)
        result, facts = api.plan_experiment(experiment)
    table = Table(title=f"plan of {experiment.name!r}")
    for column in ("pass", "blocks", "gram_blocks", "memory", "GFLOP/token"):
        table.add_column(column, justify="right")
    for row in result.table().to_dict("records"):
        table.add_row(str(row["pass"] + 1), str(row["blocks"]), str(row["gram_blocks"]),
                      f"{row['bytes'] / 2**30:.2f} GiB", f"{row['gflop_per_token']:.3g}")
    console.print(table)
    for fact, text in facts.items():
        console.print(f"{fact}: {text}", highlight=False)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a finished run directory")) -> None:
    """Re-render plots and report.html from a run's saved tables, with the run's own header facts."""
    from . import api
    with _user_errors():
        path = api.render_report(run_dir)
    console.print(f"report: {path}")


@app.command()
def summary(run_dir: Path = typer.Argument(..., help="a finished run directory"),
            csv: bool = typer.Option(False, "--csv", help="print CSV instead of a table")) -> None:
    """Print the per-unit-set summary of a finished run (to stdout; full width when piped)."""
    from . import api
    with _user_errors():
        record = api.load_run(run_dir)
        _print_layers(record.comparison.layers, Console(markup=False, highlight=False), as_csv=csv)


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
    with _user_errors():
        group = make_group(name)
        values, labels, indicators = character_table(group), irrep_labels(group), frobenius_schur(group)
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
