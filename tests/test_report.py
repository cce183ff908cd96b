"""`write_report` on small synthetic tables: files, self-containment, headline numbers, edge cases."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from universality.errors import UniversalityError
from universality.report import write_report

MODELS = ["seed-0", "seed-1", "seed-2"]
UNIT_SETS = ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
PLOTS = ["corr_vs_baseline.png", "excess_hist.png", "pct_universal.png", "training_curves.png"]
THRESHOLD = 0.5


def make_tables(models=MODELS, unit_sets=UNIT_SETS, n_units=12, dead_every=5, universal_every=3, seed=0):
    """units, pairs, layers consistent with each other.

    Unit u is dead when u % dead_every == 0, else universal when u % universal_every == 1 (never if None).
    """
    rng = np.random.default_rng(seed)
    unit_rows, pair_rows = [], []
    for model in models:
        others = [m for m in models if m != model]
        for unit_set in unit_sets:
            for unit in range(n_units):
                dead = unit % dead_every == 0
                universal = not dead and universal_every is not None and unit % universal_every == 1
                baseline = rng.uniform(0.1, 0.3)
                max_corrs = [baseline + (rng.uniform(0.6, 0.7) if universal else rng.uniform(0.0, 0.3))
                             for _ in others]
                if dead:
                    baseline, max_corrs = np.nan, [np.nan] * len(others)
                for other, max_corr in zip(others, max_corrs):
                    pair_rows.append(dict(model=model, unit_set=unit_set, unit=unit, other_model=other,
                                          max_corr=max_corr, partner_unit_set=unit_set,
                                          partner_unit=-1 if dead else int(rng.integers(n_units)),
                                          baseline_max_corr=baseline))
                mean_max = float(np.mean(max_corrs))
                unit_rows.append(dict(model=model, unit_set=unit_set, unit=unit, mean_max_corr=mean_max,
                                      mean_baseline=baseline, excess_corr=mean_max - baseline,
                                      universal=universal, dead=dead))
    units, pairs = pd.DataFrame(unit_rows), pd.DataFrame(pair_rows)
    return units, pairs, layers_of(units)


def layers_of(units: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (model, unit_set), group in units.groupby(["model", "unit_set"], sort=False):
        live = group[~group["dead"]]
        n_universal = int(live["universal"].sum())
        rows.append(dict(model=model, unit_set=unit_set, units=len(group), dead=int(group["dead"].sum()),
                         universal=n_universal,
                         pct_universal=100.0 * n_universal / len(live) if len(live) else np.nan,
                         median_max_corr=live["mean_max_corr"].median(),
                         median_baseline=live["mean_baseline"].median(),
                         median_excess=live["excess_corr"].median()))
    return pd.DataFrame(rows)


def make_curves(models=MODELS):
    steps = np.arange(0, 200, 20)
    return {m: pd.DataFrame({"step": steps, "loss": 4.0 * np.exp(-steps / (80 + 10 * i)) + 0.5})
            for i, m in enumerate(models)}


def report(tmp_path, units, pairs, layers, curves=None, **overrides):
    kwargs = dict(units=units, pairs=pairs, layers=layers, curves=make_curves() if curves is None else curves,
                  threshold=THRESHOLD, title="demo run", config_text="[compare]\nthreshold = 0.5\n",
                  facts={"tokens streamed": "65,536", "seconds per step": "0.012"})
    kwargs.update(overrides)
    return write_report(tmp_path, **kwargs)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    units, pairs, layers = make_tables()
    path = report(run_dir, units, pairs, layers)
    return run_dir, path, path.read_text(encoding="utf-8"), units


def test_report_is_written_under_run_dir_and_returned(full_report):
    run_dir, path, _, _ = full_report
    assert path == run_dir / "report.html" and path.is_file()


def test_report_is_self_contained(full_report):
    _, _, html, _ = full_report
    assert html.count("data:image/png;base64,") == 4
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)  # nothing loaded from a path or URL


def test_report_states_headline_counts_from_units_table(full_report):
    _, _, html, units = full_report
    live = units[~units["dead"]]
    n_universal, n_live, n_dead = int(live["universal"].sum()), len(live), int(units["dead"].sum())
    assert 0 < n_universal < n_live and n_dead > 0  # the synthetic tables exercise every count
    assert f"{n_universal} of {n_live} live units are universal ({100 * n_universal / n_live:.1f}%)" in html
    assert f"{n_dead} of {len(units)} units are dead" in html
    assert "excess corr &gt; 0.5" in html


def test_report_explains_terms_and_shows_config_and_facts(full_report):
    _, _, html, _ = full_report
    for text in ("How to read this", "random orthogonal", "streamed moments", "Dead", "tokens streamed",
                 "65,536", "threshold = 0.5"):
        assert text in html


def test_top_units_table_lists_best_partner_per_other_model(full_report):
    _, _, html, units = full_report
    top = units[~units["dead"]].sort_values("excess_corr", ascending=False).iloc[0]
    section = html.split("Top 30 units by excess corr")[1]
    assert f"{top.excess_corr:.3f}" in section
    first_row = section.split("</tr>")[1]  # after the header row
    others = [m for m in MODELS if m != top.model]
    assert all(f"{m}:" in first_row for m in others)
    assert section.count("<tr>") - 1 == min(30, int((~units["dead"]).sum()))


def test_pngs_exist_and_are_nonempty(full_report):
    run_dir, _, _, _ = full_report
    for name in PLOTS:
        data = (run_dir / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_all_units_dead_in_one_unit_set_does_not_crash(tmp_path):
    units, pairs, _ = make_tables()
    dead_set = units["unit_set"] == UNIT_SETS[1]
    units.loc[dead_set, ["dead", "universal"]] = [True, False]
    units.loc[dead_set, ["mean_max_corr", "mean_baseline", "excess_corr"]] = np.nan
    html = report(tmp_path, units, pairs, layers_of(units)).read_text()
    live = units[~units["dead"]]
    assert f"{int(live['universal'].sum())} of {len(live)} live units" in html
    assert "n/a" in html  # pct_universal of the all-dead layers


def test_every_unit_dead_does_not_crash(tmp_path):
    units, pairs, _ = make_tables()
    units["dead"], units["universal"] = True, False
    units[["mean_max_corr", "mean_baseline", "excess_corr"]] = np.nan
    html = report(tmp_path, units, pairs, layers_of(units)).read_text()
    assert "0 of 0 live units are universal (n/a)" in html
    assert "No live units." in html


def test_no_universal_units_reports_zero(tmp_path):
    units, pairs, _ = make_tables(universal_every=None)
    assert not units["universal"].any()
    html = report(tmp_path, units, pairs, layers_of(units)).read_text()
    n_live = int((~units["dead"]).sum())
    assert f"0 of {n_live} live units are universal (0.0%)" in html


def test_single_unit_set_and_two_models(tmp_path):
    units, pairs, layers = make_tables(models=MODELS[:2], unit_sets=UNIT_SETS[:1])
    html = report(tmp_path, units, pairs, layers, curves=make_curves(MODELS[:2])).read_text()
    assert "across 2 models and 1 unit sets" in html
    assert all((tmp_path / "plots" / name).stat().st_size > 0 for name in PLOTS)


def test_nan_values_in_live_units_and_pairs_are_tolerated(tmp_path):
    units, pairs, layers = make_tables()
    units.loc[3, ["mean_max_corr", "excess_corr"]] = np.nan
    pairs.loc[::7, "max_corr"] = np.nan
    top = units.loc[units["excess_corr"].idxmax()]
    no_partner = (pairs[["model", "unit_set", "unit"]] == top[["model", "unit_set", "unit"]].values).all(axis=1)
    pairs.loc[no_partner, ["partner_unit", "max_corr"]] = [-1, np.nan]  # the top unit has no partner anywhere
    layers.loc[0, "median_excess"] = np.nan
    curves = make_curves()
    curves["seed-0"].loc[2, "loss"] = np.nan
    html = report(tmp_path, units, pairs, layers, curves=curves).read_text()
    assert html.count('<span class="muted">none</span>') == len(MODELS) - 1
    assert "<td class=\"num\">–</td>" in html  # NaN median in the per-layer table


def test_empty_curves_skip_the_training_plot_and_remove_a_stale_one(tmp_path):
    units, pairs, layers = make_tables()
    report(tmp_path, units, pairs, layers)
    assert (tmp_path / "plots" / "training_curves.png").exists()
    html = report(tmp_path, units, pairs, layers, curves={}).read_text()
    assert html.count("data:image/png;base64,") == 3
    assert not (tmp_path / "plots" / "training_curves.png").exists()


def test_writing_twice_replaces_the_report_cleanly(tmp_path):
    units, pairs, layers = make_tables()
    report(tmp_path, units, pairs, layers, title="first title")
    path = report(tmp_path, units, pairs, layers, title="second title")
    html = path.read_text()
    assert "second title" in html and "first title" not in html
    assert html.count("<html") == 1 and html.rstrip().endswith("</html>")
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_user_strings_are_escaped(tmp_path):
    units, pairs, layers = make_tables(models=["<b>seed-0</b>", "seed-1"], unit_sets=UNIT_SETS[:1])
    html = report(tmp_path, units, pairs, layers, curves={}, title="<script>alert(1)</script>",
                  config_text="a = '<tag>' & b", facts={"<k>": "<v>"}).read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>seed-0</b>" not in html and "&lt;b&gt;seed-0" in html
    assert "&lt;tag&gt;" in html and "&amp; b" in html and "&lt;k&gt;" in html


def test_missing_column_names_table_and_expected_columns(tmp_path):
    units, pairs, layers = make_tables()
    with pytest.raises(UniversalityError, match=r"units table is missing columns \['dead'\]; expected"):
        report(tmp_path, units.drop(columns="dead"), pairs, layers)
    assert not (tmp_path / "report.html").exists()


def test_extra_sections_render_tables_and_figures_escaped(tmp_path):
    from universality.report import ReportSection
    units, pairs, layers = make_tables()
    png = (tmp_path / "probe.png")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.figure(figsize=(1, 1)); plt.savefig(png); plt.close("all")
    frame = pd.DataFrame({"irrep": ["(4,1)", "<sign>"], "fve": [0.9876543, 1e-5]})
    section = ReportSection("Irreps per seed", text="key irreps <b>", tables=[("logit similarity", frame)],
                            figures=[("irreps.png", "FVE per irrep", png.read_bytes())], max_rows=1)
    html = report(tmp_path / "run", units, pairs, layers, sections=[section]).read_text()
    assert "<h2>Irreps per seed</h2>" in html and "key irreps &lt;b&gt;" in html
    assert "<td>(4,1)</td><td>0.988</td>" in html and "&lt;sign&gt;" not in html  # max_rows=1
    assert "1 more rows in the parquet table" in html
    assert (tmp_path / "run" / "plots" / "irreps.png").is_file() and html.count("data:image/png;base64,") == 5
