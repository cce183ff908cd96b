"""`write_site`: a run's report as a static site, opened from disk with no server.

| input             | one row per                          | columns                                           |
|-------------------|--------------------------------------|---------------------------------------------------|
| `units`           | (model, unit_set, unit)              | `COLUMNS["units"]`                                |
| `pairs`           | (model, unit_set, unit, other_model) | `COLUMNS["pairs"]` (+ `baseline_max_corr_r{r}`)   |
| `layers`          | (model, unit_set)                    | `COLUMNS["layers"]`                               |
| `curves`          | model -> DataFrame per logged step   | step, loss (`{}`: no training)                    |
| `unit_facts`      | (model, unit_set, unit)              | any others: shown on unit pages (family, role ...) |
| `group_seeds`     | model                                | model, final_test_acc                             |

Files written under `run_dir`:

    report.html               the index: headline, plots, per-layer table, every universal unit (sortable)
    units.csv                 every universal unit, as in the index table (which shows the first 5000)
    sets/NNN-<unit set>.html  one page per unit set: every unit, sortable, and its excess histogram
    unit.html#<id>            one page per universal unit, its data read from units/shard-NNN.js
    units/shard-NNN.js        unit records, 200 per file, each file assigning a global
                              (`window.UNIV_SHARDS[n] = ...`): browsers block fetch() of local JSON on
                              file://, but load a <script src> from the same folder
    site/{site.css,table.js,unit.js}, plots/*.png
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path

import pandas as pd

from ..errors import UniversalityError
from . import _plots
from ._headline import MATCHED_R, headline, partner_claims, ungeneralised, without_models
from ._html import ReportSection, json_for_script, render_section, template, write_atomically
from ._unit_data import index_table, set_table, unit_shards, universal_units

__all__ = ["write_site", "write_report", "COLUMNS"]

COLUMNS = {
    "units": ["model", "unit_set", "unit", "mean_max_corr", "mean_baseline", "excess_corr", "universal", "dead"],
    "pairs": ["model", "unit_set", "unit", "other_model", "max_corr", "partner_unit_set", "partner_unit",
              "baseline_max_corr"],
    "layers": ["model", "unit_set", "units", "dead", "universal", "pct_universal", "median_max_corr",
               "median_baseline", "median_excess"],
}
_SETTINGS = ("threshold", "rotations", "seed")
_INDEX_ROWS = 5000  # universal units listed in report.html (all of them in units.csv and on unit pages)
_SHARD_SIZE = 200  # unit records per units/shard-NNN.js
_STATIC = ("site.css", "table.js", "unit.js")


def write_site(run_dir: Path, *, units: pd.DataFrame, pairs: pd.DataFrame, layers: pd.DataFrame,
               settings: Mapping, curves: dict[str, pd.DataFrame], title: str, config_text: str,
               facts: dict[str, str], sections: Sequence[ReportSection] = (), top_activations=None,
               token_text: Callable[[int], tuple[list[str], int]] | None = None,
               unit_facts: pd.DataFrame | None = None, group_seeds: pd.DataFrame | None = None,
               generalised_accuracy: float = 0.99, include_ungeneralised: bool = False,
               contexts: int = 10, features: pd.DataFrame | None = None) -> Path:
    """Write the report site into `run_dir` (files in the module docstring); return `run_dir/report.html`.

    **Arguments:**
    - `units`, `pairs`, `layers`: the comparison tables (module docstring). Per-rotation baseline columns
      in `pairs` (`baseline_max_corr_r{r}`, written by the comparison when rotations >= 2) give the count expected under the rotation null.
    - `settings`: {"threshold", "rotations", "seed"} the tables were computed with; shown as given.
    - `curves`: model -> DataFrame(step, loss); empty frames are skipped.
    - `title`, `config_text`, `facts`: the page title, the resolved config, run facts (shown escaped).
    - `sections`: extra `ReportSection`s after the universality part.
    - `top_activations`: a `moments.TopActivations` of the same models (histograms, top tokens) or None.
    - `token_text(global token index) -> (token strings, position of that token in them)`: contexts.
    - `unit_facts`: keyed by model, unit_set, unit; its other columns are shown on unit pages.
    - `group_seeds` (model, final_test_acc): seeds below `generalised_accuracy` are flagged in the headline
      and left out of the universality counts (excess recomputed over the rest) unless
      `include_ungeneralised`; kept when fewer than 2 would remain.
    - `contexts`: top-activating contexts shown per unit.
    - `features`: universal features, one row per feature (`compare.universal_features`), listed before the
      universal units; None: no such section.

    Raises `UniversalityError` naming the missing columns or settings, before writing anything.

    >>> import tempfile, pandas as pd
    >>> units = pd.DataFrame({"model": ["s0", "s1"], "unit_set": "blocks.0.mlp.hook_post", "unit": 0,
    ...     "mean_max_corr": 0.9, "mean_baseline": 0.2, "excess_corr": 0.7, "universal": True, "dead": False})
    >>> pairs = units[["model", "unit_set", "unit"]].assign(other_model=["s1", "s0"], max_corr=0.9,
    ...     partner_unit_set="blocks.0.mlp.hook_post", partner_unit=0, baseline_max_corr=0.2)
    >>> layers = units[["model", "unit_set"]].assign(units=1, dead=0, universal=1, pct_universal=100.0,
    ...     median_max_corr=0.9, median_baseline=0.2, median_excess=0.7)
    >>> path = write_site(Path(tempfile.mkdtemp()), units=units, pairs=pairs, layers=layers, curves={},
    ...     settings={"threshold": 0.5, "rotations": 1, "seed": 0}, title="demo", config_text="", facts={})
    >>> path.name, (path.parent / "units" / "shard-000.js").is_file()
    ('report.html', True)
    """
    run_dir = Path(run_dir)
    # 1) check everything before writing anything
    for name, table in (("units", units), ("pairs", pairs), ("layers", layers)):
        _check_columns(name, table, COLUMNS[name])
    missing = [key for key in _SETTINGS if key not in settings]
    if missing:
        raise UniversalityError(f"settings lack {missing}; pass the threshold, rotations and seed the tables "
                                "were computed with")
    curves = {str(model): curve for model, curve in (curves or {}).items() if len(curve)}
    for model, curve in curves.items():
        _check_columns(f"curves[{model!r}]", curve, ["step", "loss"])
    threshold = float(settings["threshold"])

    # 2) seeds that never generalised: out of the claims unless asked (and unless too few would remain)
    flagged = ungeneralised(group_seeds, generalised_accuracy)
    models = list(pd.unique(units["model"]))
    excluded = [] if include_ungeneralised or len(set(models) - set(flagged)) < 2 else sorted(flagged)
    if excluded:
        units, pairs, layers = without_models(units, pairs, excluded, threshold)

    # 3) plots, numbers, tables
    plots_dir = run_dir / "plots"
    figures = _draw_plots(plots_dir, units, layers, curves, threshold)
    numbers = headline(units, pairs, settings)
    claims = partner_claims(units, pairs)
    universal = universal_units(units)
    unit_sets = list(pd.unique(units["unit_set"]))
    slugs = {name: f"{i:03d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', str(name))[:80]}" for i, name in enumerate(unit_sets)}
    set_pages = {name: f"sets/{slug}.html" for name, slug in slugs.items()}
    table, csv = index_table(universal, claims, set_pages, _INDEX_ROWS)
    write_atomically(run_dir / "units.csv", csv.to_csv(index=False).encode("utf-8"))

    # 4) unit pages: one template page, data in shards
    shards = []
    for shard, data in unit_shards(universal, claims, top_activations=top_activations, token_text=token_text,
                                   unit_facts=unit_facts, contexts=contexts, shard_size=_SHARD_SIZE):
        name = f"units/shard-{shard:03d}.js"
        write_atomically(run_dir / name, (f"window.UNIV_SHARDS = window.UNIV_SHARDS || {{}};\n"
                                          f"window.UNIV_SHARDS[{shard}] = {json_for_script(data)};\n").encode())
        shards.append(name)
    _remove_stale(run_dir / "units", "shard-*.js", shards)
    edges = [] if top_activations is None else [float(e) for e in top_activations.bin_edges]
    page_config = {"shard_size": _SHARD_SIZE, "units": len(universal), "bin_edges": edges}
    _write_page(run_dir / "unit.html", "unit.html.j2", root="", title=title, config=json_for_script(page_config))

    # 5) unit-set pages
    page_ids = dict(zip(zip(universal["model"], universal["unit_set"], universal["unit"]), universal["id"]))
    for name in unit_sets:
        in_set = units[units["unit_set"] == name]
        plot = f"set-{slugs[name]}.png"
        write_atomically(plots_dir / plot, _plots.excess_hist_png(in_set, threshold))
        _write_page(run_dir / set_pages[name], "unit_set.html.j2", root="../", title=title, unit_set=name,
                    layers=layers[layers["unit_set"] == name].to_dict("records"), plot=f"../plots/{plot}",
                    table=json_for_script(set_table(in_set, page_ids)))
    _remove_stale(run_dir / "sets", "*.html", set_pages.values())
    _remove_stale(plots_dir, "set-*.png", [f"set-{slug}.png" for slug in slugs.values()])
    for asset in _STATIC:
        write_atomically(run_dir / "site" / asset, resources.files(__package__).joinpath(asset).read_bytes())

    # 6) the index
    path = run_dir / "report.html"
    _write_page(path, "report.html.j2", root="", title=title, facts=list(facts.items()), numbers=numbers,
                settings={key: settings[key] for key in _SETTINGS}, threshold=threshold, matched_r=MATCHED_R,
                n_models=units["model"].nunique(), n_unit_sets=len(unit_sets), figures=figures,
                layers=layers.to_dict("records"), set_pages=set_pages, table=json_for_script(table),
                listed=len(table["rows"]), flagged=flagged, excluded=excluded, level=generalised_accuracy,
                sections=[render_section(section, plots_dir) for section in sections], config_text=config_text,
                features=None if features is None else render_section(_features_section(features), plots_dir))
    return path


def write_report(run_dir: Path, *, units, pairs, layers, curves, threshold: float, title: str, config_text: str,
                 facts: dict[str, str], sections: Sequence[ReportSection] = (), rotations: int | None = None,
                 seed: int | None = None) -> Path:
    """The former entry point, kept until every caller passes `settings` to `write_site` (same site)."""
    return write_site(run_dir, units=units, pairs=pairs, layers=layers, curves=curves, title=title,
                      settings={"threshold": threshold, "rotations": rotations, "seed": seed},
                      config_text=config_text, facts=facts, sections=sections)


def _features_section(features: pd.DataFrame) -> ReportSection:
    return ReportSection(
        "Universal features", max_rows=100,
        text=("Units grouped across models: the connected clusters of the best-partner graph, where an edge joins a "
              "universal unit to its best partner in each other model. Members from one model are near-duplicates "
              "(redundancy within the model); models counts how far the feature reaches; mean_corr is the mean "
              "Pearson r over member pairs in different models. Members are unit_set#unit."),
        tables=[(f"{len(features)} universal features, widest reach first", features)])


def _draw_plots(plots_dir: Path, units, layers, curves, threshold: float) -> list[dict]:
    drawn = [
        ("corr_vs_baseline.png", "Mean max corr against the rotated baseline, per unit set",
         lambda: _plots.corr_vs_baseline_png(units, threshold)),
        ("excess_hist.png", "Excess corr of live units", lambda: _plots.excess_hist_png(units, threshold)),
        ("pct_universal.png", "Percent of live units universal, per unit set and model",
         lambda: _plots.pct_universal_png(layers)),
    ]
    if curves:
        drawn.append(("training_curves.png", "Training loss per model", lambda: _plots.training_curves_png(curves)))
    else:
        (plots_dir / "training_curves.png").unlink(missing_ok=True)  # stale, from an earlier report
    for file_name, _, draw in drawn:
        write_atomically(plots_dir / file_name, draw())
    return [{"file": f"plots/{file_name}", "caption": caption} for file_name, caption, _ in drawn]


def _write_page(path: Path, template_name: str, **values) -> None:
    write_atomically(path, template(template_name).render(**values).encode("utf-8"))


def _remove_stale(folder: Path, pattern: str, written) -> None:
    """Files of an earlier report (more units or other unit sets) that this one did not write."""
    keep = {Path(name).name for name in written}
    for stale in folder.glob(pattern):
        if stale.name not in keep:
            stale.unlink()


def _check_columns(name: str, table: pd.DataFrame, expected: list[str]) -> None:
    missing = [column for column in expected if column not in table.columns]
    if missing:
        raise UniversalityError(f"{name} table is missing columns {missing}; expected columns: {', '.join(expected)}")
