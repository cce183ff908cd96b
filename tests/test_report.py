"""`write_site` on small synthetic tables: files, links, headline numbers and their uncertainty, the
universal-units table, unit data, page weight, group seeds, edge cases."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from universality.compare import compare_activations
from universality.compare import universality_null
from universality.errors import UniversalityError
from universality.report import write_report, write_site

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


SETTINGS = {"threshold": THRESHOLD, "rotations": 2, "seed": 0}


def report(tmp_path, units, pairs, layers, curves=None, **overrides):
    kwargs = dict(units=units, pairs=pairs, layers=layers, curves=make_curves() if curves is None else curves,
                  settings=SETTINGS, title="demo run", config_text="[compare]\nthreshold = 0.5\n",
                  facts={"tokens streamed": "65,536", "seconds per step": "0.012"})
    kwargs.update(overrides)
    return write_site(tmp_path, **kwargs)


def table_data(html: str, source: str = "universal-data") -> dict:
    """The JSON behind a sortable table of a page."""
    found = re.search(rf'<script type="application/json" id="{source}">(.*?)</script>', html, re.S)
    return json.loads(found.group(1))


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    units, pairs, layers = make_tables()
    path = report(run_dir, units, pairs, layers)
    return run_dir, path, path.read_text(encoding="utf-8"), units


def test_report_is_written_under_run_dir_and_returned(full_report):
    run_dir, path, _, _ = full_report
    assert path == run_dir / "report.html" and path.is_file()


def test_every_link_and_image_is_local_and_exists(full_report):
    run_dir, _, html, _ = full_report
    assert "http://" not in html and "https://" not in html
    for page in [run_dir / "report.html", *sorted((run_dir / "sets").glob("*.html")), run_dir / "unit.html"]:
        text = page.read_text()
        for target in re.findall(r"""(?:src|href)=["']([^"'#]+)""", text):
            assert (page.parent / target).is_file(), f"{page.name} links to missing {target}"
    assert len(list((run_dir / "sets").glob("*.html"))) == len(UNIT_SETS)


def test_report_states_headline_counts_from_units_table(full_report):
    _, _, html, units = full_report
    live = units[~units["dead"]]
    n_universal, n_live, n_dead = int(live["universal"].sum()), len(live), int(units["dead"].sum())
    assert 0 < n_universal < n_live and n_dead > 0  # the synthetic tables exercise every count
    assert f"{n_universal} of {n_live} live units are universal ({100 * n_universal / n_live:.1f}%)" in html
    assert f"{n_dead} of {len(units)} units are dead" in html
    assert "excess corr &gt; 0.5" in html
    per_model = live.groupby("model")["universal"].sum()
    assert (f"min {per_model.min()},\n    median {per_model.median():g}, max {per_model.max()}" in html)
    matched = int((live["mean_max_corr"] > 0.9).sum())
    assert f"{matched} of {n_live} live units" in html
    assert f"median {live['mean_baseline'].median():.3f})" in html
    assert "not estimated" in html  # no per-rotation columns in these pairs


def test_report_explains_terms_and_shows_config_and_facts(full_report):
    _, _, html, _ = full_report
    for text in ("How to read this", "random orthogonal", "streamed moments", "Dead", "tokens streamed",
                 "65,536", "threshold = 0.5"):
        assert text in html


def test_universal_table_lists_every_universal_unit_with_partner_claims(full_report):
    run_dir, _, html, units = full_report
    data = table_data(html)
    universal = units[units["universal"] & ~units["dead"]]
    assert len(data["rows"]) == len(universal)
    excess = [row[6] for row in data["rows"]]
    assert excess == sorted(excess, reverse=True)  # ids in order of excess corr
    csv = pd.read_csv(run_dir / "units.csv")
    assert len(csv) == len(universal) and csv["id"].tolist() == list(range(len(universal)))
    # claims: how many universal units have the same (other model, partner) as best match, direct count
    _, pairs, _ = make_tables()
    claimed = pairs.merge(universal[["model", "unit_set", "unit"]])
    counts = claimed.groupby(["other_model", "partner_unit_set", "partner_unit"]).size()
    for row in csv.itertuples():
        rows = claimed[(claimed.model == row.model) & (claimed.unit_set == row.unit_set) & (claimed.unit == row.unit)]
        expected = max(counts[(p.other_model, p.partner_unit_set, p.partner_unit)] for p in rows.itertuples())
        assert row.most_claims_on_a_partner == expected


def test_pngs_exist_and_are_nonempty(full_report):
    run_dir, _, _, _ = full_report
    for name in PLOTS:
        data = (run_dir / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_non_default_settings_are_the_ones_shown(tmp_path):
    units, pairs, _ = make_tables()
    units["universal"] = units["excess_corr"] > 0.37
    html = report(tmp_path, units, pairs, layers_of(units),
                  settings={"threshold": 0.37, "rotations": 5, "seed": 11}).read_text()
    assert "excess corr &gt; 0.37" in html and "excess corr &gt; 0.5" not in html
    assert re.search(r"<dt>threshold</dt><dd>0.37</dd>\s*<dt>rotations</dt><dd>5</dd>\s*<dt>seed</dt><dd>11</dd>", html)
    assert len(table_data(html)["rows"]) == int((units["universal"] & ~units["dead"]).sum())


def test_missing_settings_are_refused_before_writing(tmp_path):
    units, pairs, layers = make_tables()
    with pytest.raises(UniversalityError, match=r"settings lack \['rotations', 'seed'\]"):
        report(tmp_path, units, pairs, layers, settings={"threshold": 0.5})
    assert not any(tmp_path.iterdir())


def test_write_report_keeps_the_former_signature(tmp_path):
    units, pairs, layers = make_tables()
    path = write_report(tmp_path, units=units, pairs=pairs, layers=layers, curves={}, threshold=0.5, title="t",
                        config_text="", facts={})
    assert "<dt>rotations</dt><dd>not given</dd>" in path.read_text()


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
    assert "No universal units." in html


def test_no_universal_units_reports_zero(tmp_path):
    units, pairs, _ = make_tables(universal_every=None)
    assert not units["universal"].any()
    html = report(tmp_path, units, pairs, layers_of(units)).read_text()
    n_live = int((~units["dead"]).sum())
    assert f"0 of {n_live} live units are universal (0.0%)" in html
    assert not list((tmp_path / "units").glob("shard-*.js"))


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
    assert table_data(html)["rows"][0][8] == ""  # no partner listed for the top unit
    assert "<td class=\"num\">–</td>" in html  # NaN median in the per-layer table


def test_empty_curves_skip_the_training_plot_and_remove_stale_files(tmp_path):
    units, pairs, layers = make_tables()
    report(tmp_path, units, pairs, layers)
    assert (tmp_path / "plots" / "training_curves.png").exists()
    (tmp_path / "units" / "shard-007.js").write_text("stale")
    html = report(tmp_path, units, pairs, layers, curves={}).read_text()
    assert html.count("<img ") == 3
    assert not (tmp_path / "plots" / "training_curves.png").exists()
    assert not (tmp_path / "units" / "shard-007.js").exists()


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
    units, pairs, layers = make_tables(models=["<b>seed-0</b>", "seed-1"], unit_sets=["</script><i>x"])
    html = report(tmp_path, units, pairs, layers, curves={}, title="<script>alert(1)</script>",
                  config_text="a = '<tag>' & b", facts={"<k>": "<v>"}).read_text()
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "<b>seed-0</b>" not in html and "&lt;b&gt;seed-0" in html
    assert "&lt;tag&gt;" in html and "&amp; b" in html and "&lt;k&gt;" in html
    assert "</script><i>" not in html and table_data(html)["rows"][0][2][0] == "</script><i>x"


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
    frame = pd.DataFrame({"irrep": ["(4,1)", "<sign>"], "fve": [0.9876543, 1e-5],
                          "epoch": pd.array([120, None], dtype="Int64")})
    section = ReportSection("Irreps per seed", text="key irreps <b>", tables=[("logit similarity", frame)],
                            figures=[("irreps.png", "FVE per irrep", png.read_bytes())], max_rows=1)
    html = report(tmp_path / "run", units, pairs, layers, sections=[section]).read_text()
    assert "<h2>Irreps per seed</h2>" in html and "key irreps &lt;b&gt;" in html
    assert "<td>(4,1)</td><td>0.988</td><td>120</td>" in html and "&lt;sign&gt;" not in html  # max_rows=1
    assert "1 more rows in the parquet table" in html
    assert (tmp_path / "run" / "plots" / "irreps.png").is_file() and 'src="plots/irreps.png"' in html


def large_tables(universal_share: float, models=3, unit_sets=4, units_per_set=3072, seed=0):
    """Synthetic units and pairs of models x unit_sets x units_per_set units (3 x 4 x 3072 = 36,864)."""
    rng = np.random.default_rng(seed)
    names = [f"s{m}" for m in range(models)]
    sets = [f"blocks.{layer}.mlp.hook_post" for layer in range(unit_sets)]
    index = pd.MultiIndex.from_product([names, sets, range(units_per_set)], names=["model", "unit_set", "unit"])
    units = index.to_frame(index=False)
    n = len(units)
    units["mean_baseline"] = rng.uniform(0.3, 0.6, n)
    universal = rng.random(n) < universal_share
    units["mean_max_corr"] = units["mean_baseline"] + np.where(universal, rng.uniform(0.55, 0.6, n), rng.uniform(0, 0.4, n))
    units["excess_corr"] = units["mean_max_corr"] - units["mean_baseline"]
    units["universal"], units["dead"] = universal, False
    units = units[COLUMNS_UNITS]
    pairs = pd.concat([units[["model", "unit_set", "unit"]].assign(
        other_model=lambda f, k=k: [names[(names.index(m) + k) % models] for m in f["model"]],
        max_corr=units["mean_max_corr"], partner_unit_set=units["unit_set"],
        partner_unit=rng.integers(0, units_per_set, n), baseline_max_corr=units["mean_baseline"])
        for k in range(1, models)], ignore_index=True)
    return units, pairs


COLUMNS_UNITS = ["model", "unit_set", "unit", "mean_max_corr", "mean_baseline", "excess_corr", "universal", "dead"]


@pytest.mark.parametrize("universal_share", [0.03, 1.0])
def test_index_stays_under_2_mb_for_37k_units(tmp_path, universal_share):
    from universality.compare import layer_summary
    units, pairs = large_tables(universal_share)
    assert len(units) == 36_864
    path = write_site(tmp_path, units=units, pairs=pairs, layers=layer_summary(units), curves={},
                      settings=SETTINGS, title="large", config_text="", facts={})
    size = path.stat().st_size
    assert size < 2_000_000, f"report.html is {size:,} bytes"
    n_universal = int(units["universal"].sum())
    assert len(pd.read_csv(tmp_path / "units.csv")) == n_universal  # every one in the CSV ...
    shards = sorted((tmp_path / "units").glob("shard-*.js"))
    assert len(shards) == -(-n_universal // 200)  # ... and on a unit page
    assert max(p.stat().st_size for p in shards) < 2_000_000


def small_comparison(rotations=3):
    """compare_activations on three small models sharing a few latent directions."""
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(3000, 3, generator=generator)
    batches = {f"m{k}": {"s": latent @ torch.randn(3, 10, generator=generator) + torch.randn(3000, 10, generator=generator),
                         "t": torch.randn(3000, 6, generator=generator)} for k in range(3)}
    return compare_activations([batches], rotations=rotations, seed=5)


def test_rotation_baselines_average_to_the_pairs_baseline():
    comparison = small_comparison()
    per_rotation = comparison.pairs
    mean = per_rotation[[f"baseline_max_corr_r{r}" for r in range(3)]].mean(axis=1)
    np.testing.assert_allclose(mean, comparison.pairs["baseline_max_corr"], atol=1e-6)
    assert per_rotation["baseline_max_corr_r0"].ne(per_rotation["baseline_max_corr_r1"]).any()


def test_null_count_equals_a_direct_leave_one_rotation_out_loop():
    rng = np.random.default_rng(1)
    pairs = pd.DataFrame({"model": np.repeat(["a", "b"], 40), "unit_set": "s", "unit": np.tile(np.repeat(range(20), 2), 2),
                          "other_model": "x", **{f"baseline_max_corr_r{r}": rng.uniform(0, 1, 80) for r in range(4)}})
    pairs.loc[5, "baseline_max_corr_r2"] = np.nan  # a dead partner is skipped in the mean over models
    expected = []
    for r in range(4):
        count = 0
        for _, rows in pairs.groupby(["model", "unit_set", "unit"]):
            values = rows[[f"baseline_max_corr_r{s}" for s in range(4)]].to_numpy()
            means = [np.nanmean(values[:, s]) for s in range(4)]
            null_excess = means[r] - np.mean([means[s] for s in range(4) if s != r])
            count += null_excess > 0.2
        expected.append(count)
    result = universality_null(pairs, threshold=0.2)
    assert result == {"rotations": 4, "expected": np.mean(expected), "min": min(expected), "max": max(expected)}
    assert 0 < result["expected"] < 40


def test_headline_shows_the_null_count_from_per_rotation_baselines(tmp_path):
    comparison = small_comparison()
    pairs = comparison.pairs
    null = universality_null(pairs, threshold=0.05)
    units = comparison.units.assign(universal=comparison.units["excess_corr"] > 0.05)
    html = report(tmp_path, units, pairs, comparison.layers, curves={},
                  settings={"threshold": 0.05, "rotations": 3, "seed": 5}).read_text()
    assert f"{null['expected']:.1f} units under the rotation null" in html
    assert f"over {null['rotations']} rotations" in html


def test_seeds_that_never_generalised_are_flagged_and_left_out(tmp_path):
    units, pairs, layers = make_tables()
    seeds = pd.DataFrame({"model": MODELS, "final_test_acc": [1.0, 0.41, 0.995]})
    html = report(tmp_path, units, pairs, layers, group_seeds=seeds).read_text()
    assert "Seeds that never generalised" in html and "seed-1 (0.410)" in html and "Left out of these counts" in html
    kept = pairs[(pairs.model != "seed-1") & (pairs.other_model != "seed-1")]
    excess = kept.groupby(["model", "unit_set", "unit"]).apply(lambda g: g.max_corr.mean() - g.baseline_max_corr.mean())
    n_universal = int((excess > THRESHOLD).sum())
    assert f"<strong>{n_universal} of {int((~units.dead & (units.model != 'seed-1')).sum())} live units" in html
    assert all(row[1] != "seed-1" for row in table_data(html)["rows"])
    kept_html = report(tmp_path / "all", units, pairs, layers, group_seeds=seeds, include_ungeneralised=True).read_text()
    assert "Included in every count" in kept_html


def test_group_sections_print_epochs_as_integers_and_leave_out_ungeneralised_seeds():
    from universality.report import group_sections
    seeds = pd.DataFrame({"model": ["s0", "s1"], "epochs_to_grok": [1200.0, None], "final_test_acc": [1.0, 0.3]})
    emergence = pd.DataFrame({"model": ["s0", "s0", "s1"], "irrep": ["sign", "std", "sign"], "epoch": [300.0, 900.0, 50.0]})
    irreps = pd.DataFrame({"model": ["s0", "s1"], "irrep": "sign", "dim": 1, "key": [True, True], "similarity": [0.9, 0.1]})
    sections = group_sections({"group_seeds": seeds, "group_emergence": emergence, "group_irreps": irreps}, key_threshold=0.05)
    seed_table = sections[0].tables[0][1]
    assert seed_table["generalised"].tolist() == [True, False] and str(seed_table["epochs_to_grok"].dtype) == "Int64"
    assert "s1" in sections[0].text
    across = sections[1].tables[0][1]
    assert across["seeds_key"].tolist() == [1] and across["mean_similarity"].tolist() == [0.9]  # s1 left out
    order = sections[2].tables[0][1]
    assert order["model"].tolist() == ["s0"] and order["std"].tolist() == [900]


def test_group_sections_show_shared_irrep_subspaces_per_seed_pair_without_ungeneralised_seeds():
    from universality.report import group_sections
    seeds = pd.DataFrame({"model": ["s0", "s1", "s2"], "final_test_acc": [1.0, 0.3, 1.0]})
    shared = pd.DataFrame({"seed_a": ["s0", "s0", "s0", "s0", "s1", "s1"], "seed_b": ["s1", "s1", "s2", "s2", "s2", "s2"],
                           "irrep": ["sign", "std"] * 3, "dim": [1, 4] * 3,
                           "mean_canonical_corr": [0.1, 0.2, 0.9, 0.05, 0.3, 0.4], "cka": 0.0})
    sections = group_sections({"group_seeds": seeds, "group_irrep_similarity": shared}, key_threshold=0.05)
    section = next(s for s in sections if s.title == "Irrep subspaces shared across seeds")
    grid = section.tables[0][1]
    assert grid.columns.tolist() == ["pair", "sign", "std"]  # irreps in the table's order
    assert grid.values.tolist() == [["s0 / s2", 0.9, 0.05]]  # s1 never generalised: left out


@pytest.mark.parametrize("lowest", [0.5, 1e-2, 1e-7, 1e-12])
def test_training_loss_log_axis_labels_never_overlap(lowest):
    from universality.report._plots import training_curves_figure
    steps = np.arange(1, 2000)
    fig = training_curves_figure({"s0": pd.DataFrame({"step": steps, "loss": 5 * (lowest / 5) ** (steps / 2000)})})
    fig.canvas.draw()
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    low, high = ax.get_ylim()
    labels = [t for t in ax.get_yticklabels() if t.get_text() and low <= t.get_position()[1] <= high]
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda box: box.y0)
    assert len(boxes) >= 3
    assert all(below.y1 <= above.y0 for below, above in zip(boxes, boxes[1:]))


def test_unit_records_hold_partners_histogram_and_contexts(tmp_path):
    from universality.moments import TopActivations
    units, pairs, layers = make_tables()
    layout = {m: {s: 12 for s in UNIT_SETS} for m in MODELS}
    top = TopActivations(layout, k=4)
    generator = torch.Generator().manual_seed(2)
    top.update({m: {s: torch.randn(50, 12, generator=generator) for s in UNIT_SETS} for m in MODELS}, torch.arange(50) * 3)
    asked = []

    def token_text(token):
        asked.append(token)
        return [f"t{token - 1}", f"t{token}"], 1

    report(tmp_path, units, pairs, layers, top_activations=top, token_text=token_text, contexts=3)
    text = (tmp_path / "units" / "shard-000.js").read_text()
    shard = json.loads(text.split("window.UNIV_SHARDS[0] = ", 1)[1].rstrip().rstrip(";"))
    first = shard["units"][0]
    expected = top.token_ids_[first["model"]][first["unit_set"]][:3, first["unit"]].tolist()
    assert [token for token, _ in first["top"]] == expected
    assert shard["contexts"][str(expected[0])] == [[f"t{expected[0] - 1}", f"t{expected[0]}"], 1]
    counts = top.histogram_[first["model"]][first["unit_set"]][first["unit"]]
    assert sum(first["histogram"][1:]) == int(counts.sum()) == 50
    assert len(first["partners"]) == len(MODELS) - 1 and all(len(p["top"]) == 3 for p in first["partners"])
    assert len(asked) == len(set(asked))  # each token's context resolved once

    with pytest.raises(UniversalityError, match=r"token_text\(\d+\) gave position 5 outside its 2 tokens"):
        report(tmp_path, units, pairs, layers, top_activations=top, token_text=lambda token: (["a", "b"], 5))
