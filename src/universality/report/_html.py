"""Building blocks of the report's pages: extra sections, cell formatting, templates, atomic writes.

Every file is written atomically (a temporary name in the same directory, then `os.replace`), so a
reader never sees half a file and a rerun replaces each file whole.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd

__all__ = ["ReportSection", "cell_text", "render_section", "template", "write_atomically", "json_for_script"]


@dataclass
class ReportSection:
    """An extra part of the report (irreps of group networks, neuron families ...), after the main one.

    `tables`: (caption, DataFrame) shown as HTML tables (first `max_rows` rows; floats to 3 decimals);
    `figures`: (file name, caption, PNG bytes), written to plots/ and shown from there.
    """

    title: str
    text: str = ""
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, str, bytes]] = field(default_factory=list)
    max_rows: int = 40


def cell_text(value) -> str:
    """A table cell: floats to 3 decimals (3 significant digits when tiny or huge), NaN / NA as an en dash,
    integral floats of integer columns with missing values (epochs) as integers."""
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e3 or 0 < abs(value) < 1e-3 else f"{value:.3f}"
    return str(value)


def render_section(section: ReportSection, plots_dir: Path) -> dict:
    """A section's figures written to plots/ and its tables as header + formatted rows."""
    figures = []
    for file_name, caption, png in section.figures:
        write_atomically(plots_dir / file_name, png)
        figures.append({"file": f"plots/{file_name}", "caption": caption})
    tables = []
    for caption, frame in section.tables:
        shown = frame.head(section.max_rows)
        rows = [[cell_text(v) for v in row] for row in shown.astype(object).itertuples(index=False)]
        tables.append({"caption": caption, "columns": [str(c) for c in shown.columns], "rows": rows,
                       "hidden": len(frame) - len(shown)})
    return {"title": section.title, "text": section.text, "figures": figures, "tables": tables}


def _corr(value) -> str:
    """A Pearson r (or difference of r) to 3 decimals; NaN as an en dash."""
    return "–" if pd.isna(value) else f"{float(value):.3f}"


def _percent(value) -> str:
    return "n/a" if pd.isna(value) else f"{float(value):.1f}%"


def json_for_script(data) -> str:
    """JSON safe inside <script type="application/json">: '<', '>' and '&' escaped as \\u003c ..."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def template(name: str):
    """The jinja template `name` of this package, autoescaped, with the `corr` and `percent` filters."""
    import jinja2

    def load(template_name: str) -> str:
        return resources.files(__package__).joinpath(template_name).read_text(encoding="utf-8")

    env = jinja2.Environment(loader=jinja2.FunctionLoader(load), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["corr"] = _corr
    env.filters["percent"] = _percent
    return env.get_template(name)


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then `os.replace` it over `path` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(temp, 0o644)  # mkstemp creates 0600; a report is meant to be shared
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
