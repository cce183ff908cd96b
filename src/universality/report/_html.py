"""`write_report`: a run's tables as PNG plots and one self-contained `report.html`.

| input    | one row per                                   | columns                                     |
|----------|-----------------------------------------------|---------------------------------------------|
| `units`  | (model, unit_set, unit)                       | `_COLUMNS["units"]`                         |
| `pairs`  | (model, unit_set, unit, other_model)          | `_COLUMNS["pairs"]`                         |
| `layers` | (model, unit_set)                             | `_COLUMNS["layers"]`                        |
| `curves` | model -> DataFrame, one row per logged step   | step, loss (may be `{}`: no training)       |

Files written (each atomically: a temporary name in the same directory, then `os.replace`, so a reader
never sees half a file and a rerun replaces the last report whole):

    run_dir/plots/{corr_vs_baseline,excess_hist,pct_universal,training_curves}.png
    run_dir/report.html   (the same PNGs inline as base64: no external resources)
"""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd

from ..errors import UniversalityError
from . import _plots

__all__ = ["write_report", "ReportSection"]


@dataclass
class ReportSection:
    """An extra part of the report (irreps of group networks, neuron families ...), after the main one.

    `tables`: (caption, DataFrame) shown as HTML tables (first `max_rows` rows; floats to 3 decimals);
    `figures`: (file name, caption, PNG bytes), written to plots/ and inlined.
    """

    title: str
    text: str = ""
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, str, bytes]] = field(default_factory=list)
    max_rows: int = 40

_COLUMNS = {
    "units": ["model", "unit_set", "unit", "mean_max_corr", "mean_baseline", "excess_corr", "universal", "dead"],
    "pairs": ["model", "unit_set", "unit", "other_model", "max_corr", "partner_unit_set", "partner_unit",
              "baseline_max_corr"],
    "layers": ["model", "unit_set", "units", "dead", "universal", "pct_universal", "median_max_corr",
               "median_baseline", "median_excess"],
}
_CURVE_COLUMNS = ["step", "loss"]
_TOP_UNITS = 30  # rows in the "most universal units" table
_UNIT_KEY = ["model", "unit_set", "unit"]


def write_report(
    run_dir: Path,
    *,
    units: pd.DataFrame,
    pairs: pd.DataFrame,
    layers: pd.DataFrame,
    curves: dict[str, pd.DataFrame],
    threshold: float,
    title: str,
    config_text: str,
    facts: dict[str, str],
    sections: list[ReportSection] = (),
) -> Path:
    """Write `run_dir/plots/*.png` and a self-contained `run_dir/report.html`; return the html path.

    **Arguments:**
    - `units`, `pairs`, `layers`: the comparison tables (columns in the module docstring).
    - `curves`: model name -> DataFrame(step, loss); `{}` (or only empty frames) skips the training plot.
    - `threshold`: excess corr (Pearson r) above which a unit counts as universal, as used for `universal`.
    - `title`, `config_text`, `facts`: shown as given (HTML-escaped): the page title, the resolved config
      in a `<pre>`, and run facts (tokens streamed, seconds per step, versions, ...) at the top.
    - `sections`: extra `ReportSection`s, rendered in order after the universality tables.

    Raises `UniversalityError` naming the missing columns if a table lacks any.

    >>> import tempfile, pandas as pd
    >>> units = pd.DataFrame({"model": ["s0", "s1"], "unit_set": "blocks.0.mlp.hook_post", "unit": 0,
    ...     "mean_max_corr": 0.9, "mean_baseline": 0.2, "excess_corr": 0.7, "universal": True, "dead": False})
    >>> pairs = units[["model", "unit_set", "unit"]].assign(other_model=["s1", "s0"], max_corr=0.9,
    ...     partner_unit_set="blocks.0.mlp.hook_post", partner_unit=0, baseline_max_corr=0.2)
    >>> layers = units[["model", "unit_set"]].assign(units=1, dead=0, universal=1, pct_universal=100.0,
    ...     median_max_corr=0.9, median_baseline=0.2, median_excess=0.7)
    >>> path = write_report(Path(tempfile.mkdtemp()), units=units, pairs=pairs, layers=layers, curves={},
    ...     threshold=0.5, title="demo", config_text="", facts={})
    >>> path.name
    'report.html'
    """
    run_dir = Path(run_dir)
    # 1) check every table before drawing anything
    for name, table in (("units", units), ("pairs", pairs), ("layers", layers)):
        _check_columns(name, table, _COLUMNS[name])
    curves = {str(model): curve for model, curve in (curves or {}).items() if len(curve)}
    for model, curve in curves.items():
        _check_columns(f"curves[{model!r}]", curve, _CURVE_COLUMNS)

    # 2) plots: each PNG to plots/ and, base64-encoded, into the page
    plots_dir = run_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    drawn = [
        ("corr_vs_baseline.png", "Mean max corr against the rotated baseline, per unit set",
         lambda: _plots.corr_vs_baseline_png(units, threshold)),
        ("excess_hist.png", "Excess corr of live units", lambda: _plots.excess_hist_png(units, threshold)),
        ("pct_universal.png", "Percent of live units universal, per unit set and model",
         lambda: _plots.pct_universal_png(layers)),
    ]
    if curves:
        drawn.append(("training_curves.png", "Training loss per model",
                      lambda: _plots.training_curves_png(curves)))
    else:
        (plots_dir / "training_curves.png").unlink(missing_ok=True)  # stale, from an earlier report
    figures = []
    for file_name, caption, draw in drawn:
        png = draw()
        _write_atomically(plots_dir / file_name, png)
        figures.append({"file": file_name, "caption": caption, "base64": base64.b64encode(png).decode("ascii")})
    extra = [_render_section(section, plots_dir) for section in sections]

    # 3) the page
    html = _template().render(
        title=title,
        facts=list(facts.items()),
        headline=_plots.headline_counts(units),
        n_models=units["model"].nunique(),
        n_unit_sets=units["unit_set"].nunique(),
        threshold=threshold,
        figures=figures,
        layers=layers.to_dict("records"),
        top_units=_top_units(units, pairs),
        n_top=_TOP_UNITS,
        config_text=config_text,
        sections=extra,
    )
    path = run_dir / "report.html"
    _write_atomically(path, html.encode("utf-8"))
    return path


def _render_section(section: ReportSection, plots_dir: Path) -> dict:
    """A section's figures written to plots/ and its tables as header + formatted rows."""
    figures = []
    for file_name, caption, png in section.figures:
        _write_atomically(plots_dir / file_name, png)
        figures.append({"file": file_name, "caption": caption, "base64": base64.b64encode(png).decode("ascii")})
    tables = []
    for caption, frame in section.tables:
        shown = frame.head(section.max_rows)
        rows = [[_cell(v) for v in row] for row in shown.itertuples(index=False)]
        tables.append({"caption": caption, "columns": [str(c) for c in shown.columns], "rows": rows,
                       "hidden": len(frame) - len(shown)})
    return {"title": section.title, "text": section.text, "figures": figures, "tables": tables}


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if pd.isna(value) else f"{value:.3g}" if abs(value) >= 1e3 or 0 < abs(value) < 1e-3 else f"{value:.3f}"
    return str(value)


def _check_columns(name: str, table: pd.DataFrame, expected: list[str]) -> None:
    missing = [column for column in expected if column not in table.columns]
    if missing:
        raise UniversalityError(f"{name} table is missing columns {missing}; expected columns: {', '.join(expected)}")


def _top_units(units: pd.DataFrame, pairs: pd.DataFrame) -> list[dict]:
    """The `_TOP_UNITS` live units with the highest excess corr, each with its best partner per other model."""
    live = units[_plots.live_mask(units)]
    top = live.sort_values("excess_corr", ascending=False, na_position="last", kind="stable").head(_TOP_UNITS)
    # pairs already holds, per other model, the partner with the highest max corr: look those rows up
    partners = {key: rows for key, rows in pairs.merge(top[_UNIT_KEY], on=_UNIT_KEY).groupby(_UNIT_KEY, sort=False)}
    rows = []
    for unit in top.itertuples(index=False):
        found = partners.get((unit.model, unit.unit_set, unit.unit))
        rows.append({
            "model": unit.model, "unit_set": unit.unit_set, "unit": unit.unit,
            "mean_max_corr": unit.mean_max_corr, "mean_baseline": unit.mean_baseline,
            "excess_corr": unit.excess_corr,
            "partners": [] if found is None else [
                {"other_model": p.other_model, "unit_set": p.partner_unit_set,
                 "unit": None if pd.isna(p.partner_unit) or p.partner_unit < 0 else int(p.partner_unit),
                 "max_corr": p.max_corr, "baseline": p.baseline_max_corr}
                for p in found.itertuples(index=False)
            ],
        })
    return rows


def _corr(value) -> str:
    """A Pearson r (or difference of r) to 3 decimals; NaN as an en dash."""
    return "–" if pd.isna(value) else f"{float(value):.3f}"


def _percent(value) -> str:
    return "n/a" if pd.isna(value) else f"{float(value):.1f}%"


def _template():
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["corr"] = _corr
    env.filters["percent"] = _percent
    source = resources.files(__package__).joinpath("report.html.j2").read_text(encoding="utf-8")
    return env.from_string(source)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then `os.replace` it over `path` (atomic on POSIX)."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(temp, 0o644)  # mkstemp creates 0600; a report is meant to be shared
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
