import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from universality import UniversalityError
from universality.api import run_experiment
from universality.config import load_config, parse_config
from universality.moments import read_manifest

SMALL = """
name = "small"
seeds = [0, 1, 2]
[language]
seq_len = 32
[model]
d_model = 32
n_layers = 2
n_heads = 2
d_mlp = 64
activation = "relu"
[train]
steps = 40
batch_size = 16
log_every = 10
[collect]
rows = 96
batch_rows = 16
[compare]
rotations = 2
threshold = 0.2
"""


def _univ(*args, cwd):
    return subprocess.run([sys.executable, "-m", "universality.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})


def _tables(run_dir: Path):
    return {t: pd.read_parquet(run_dir / "tables" / f"{t}.parquet") for t in ("units", "pairs", "layers")}


def test_reduced_demo_runs_end_to_end_through_the_cli(tmp_path):
    (tmp_path / "small.toml").write_text(SMALL)
    done = _univ("run", "small.toml", "--runs-dir", "runs", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "small"
    for path in ("config.toml", "report.html", "plots/excess_hist.png", "plots/corr_vs_baseline.png",
                 "models/seed-0/weights.safetensors", "models/seed-2/metadata.json", "moments/state.safetensors"):
        assert (run / path).is_file(), path
    tables = _tables(run)
    assert len(tables["units"]) == 3 * 2 * 64 and len(tables["pairs"]) == 3 * 2 * 2 * 64
    assert "[provenance]" in (run / "config.toml").read_text()
    assert "torch" in (run / "config.toml").read_text()
    assert "universal" in done.stderr and "report:" in done.stderr
    # the neurons table: universality, streamed moments, family against ground-truth labels, weights
    neurons = pd.read_parquet(run / "tables" / "neurons.parquet")
    assert len(neurons) == len(tables["units"])
    for column in ("excess_corr", "post_kurtosis", "pre_freq", "best_feature_set", "vr_class", "vr_unigram",
                   "cos_in_out", "vocab_kurtosis"):
        assert neurons[column].notna().any(), column
    html = (run / "report.html").read_text()
    assert "What universal neurons do" in html and "Universal neurons: small" in html and "staging" not in html
    # universal features (one row each, listed before the universal units) and the one-to-one assignment
    features = pd.read_parquet(run / "tables" / "features.parquet")
    assignment = pd.read_parquet(run / "tables" / "assignment.parquet")
    assert len(features) and (features["models"] >= 2).all() and len(assignment) == len(tables["pairs"])
    members = features.filter(like="members_").apply(lambda column: column.str.split().str.len()).sum(axis=1)
    assert (members == features["size"]).all()
    assert html.index("Universal features") < html.index('id="universal"')
    # seeds as posterior samples: every ordered pair, one cluster row per seed, the heatmap in the report
    seeds, seed_kl = (pd.read_parquet(run / "tables" / f"{t}.parquet") for t in ("seeds", "seed_kl"))
    assert len(seed_kl) == 3 * 2 and (seed_kl.kl > 0).all() and seeds.model.tolist() == ["seed-0", "seed-1", "seed-2"]
    assert (seeds.mixture_log_loss <= seeds.log_loss.mean()).all() and seeds.cluster_weight.groupby(seeds.cluster).first().sum() == 1
    assert "Seeds as samples of one posterior" in html and (run / "plots" / "seed_kl.png").stat().st_size > 1000
    by_class = neurons[neurons.best_feature_set == "class"]
    by_class = by_class[by_class.best_feature.astype(int) < 8]  # the content classes (then BOS, brackets, markers)
    assert len(by_class) and all(t.startswith(f"c{k}_t0 c{k}_t1") for k, t in zip(by_class.best_feature,
                                                                                   by_class.feature_tokens))
    assert neurons.query("best_feature_set == 'class'").feature_tokens.notna().all()  # BOS, brackets too
    # the resolved config runs again as it is, and every step is skipped
    again = _univ("run", str(run / "config.toml"), "--runs-dir", "runs", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    pd.testing.assert_frame_equal(_tables(run)["units"], tables["units"])
    summary = _univ("summary", str(run), cwd=tmp_path)
    assert summary.returncode == 0 and "blocks.1.mlp.hook_post" in summary.stderr + summary.stdout


def _check_threshold(run: Path, threshold: float) -> None:
    """Every flag in the tables, the stored settings and the page follow `threshold`."""
    units = pd.read_parquet(run / "tables" / "units.parquet")
    assert (units.universal == (units.excess_corr.fillna(-1) > threshold)).all()
    assert (units.excess_corr > threshold).any() and (units.excess_corr.dropna() <= threshold).any()
    assert json.loads((run / "tables" / "compare.json").read_text())["settings"]["threshold"] == threshold
    assert f"&gt; {threshold}" in (run / "report.html").read_text() or f"> {threshold}" in (run / "report.html").read_text()


def test_a_non_default_threshold_reaches_tables_page_and_rerender(tmp_path):
    (tmp_path / "small.toml").write_text(SMALL)
    assert _univ("run", "small.toml", "--runs-dir", "runs", cwd=tmp_path).returncode == 0
    run = tmp_path / "runs" / "small"
    _check_threshold(run, 0.2)
    (tmp_path / "other.toml").write_text(SMALL.replace("threshold = 0.2", "threshold = 0.08"))
    assert _univ("run", "other.toml", "--runs-dir", "runs", cwd=tmp_path).returncode == 0
    _check_threshold(run, 0.08)
    assert _univ("report", str(run), cwd=tmp_path).returncode == 0  # re-rendered with the tables' own settings
    _check_threshold(run, 0.08)


def test_interrupted_run_resumes_to_the_same_tables(tmp_path, monkeypatch):
    config = parse_config(__import__("tomllib").loads(SMALL))
    clean = run_experiment(config, runs_dir=tmp_path / "clean")

    class Interrupt(Exception):
        pass

    def kill_midway(task, done, total):
        if task == "stream activations" and done == 3:
            raise Interrupt
    import universality.pipeline._planned as planned
    monkeypatch.setattr(planned, "CHECKPOINT_SECONDS", 0.0)  # checkpoint after every batch
    with pytest.raises(Interrupt):
        run_experiment(config, runs_dir=tmp_path / "resumed", on_progress=kill_midway)
    partial = read_manifest(tmp_path / "resumed" / ".small.staging" / "moments")  # the run in progress
    assert partial["complete"] is False and partial["batches"] == 2
    assert not (tmp_path / "resumed" / "small").exists()  # nothing is committed before the run succeeds
    seen = []
    run_experiment(config, runs_dir=tmp_path / "resumed", on_progress=lambda t, d, n: seen.append((t, d)))
    assert ("stream activations", 2) in seen and ("stream activations", 0) not in seen  # resumed, not restarted
    for name, table in _tables(clean.run_dir).items():
        pd.testing.assert_frame_equal(_tables(tmp_path / "resumed" / "small")[name], table, check_exact=False,
                                      rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("[model]", "[model]\nwidth = 3"), "unknown key 'model.width'"),
    (lambda s: s.replace("threshold = 0.2", "threshold = 1.5"), "compare.threshold"),
    (lambda s: s.replace('activation = "relu"', 'activation = "tanh"'), "model.activation"),
    (lambda s: s.replace("[collect]", '[collect]\nunit_sets = ["blocks.*.mlp.hook_postt"]'), "did you mean"),
])
def test_bad_config_is_one_line_exit_2_and_leaves_the_run_intact(tmp_path, edit, message):
    (tmp_path / "small.toml").write_text(SMALL)
    assert _univ("run", "small.toml", "--runs-dir", "runs", cwd=tmp_path).returncode == 0
    run = tmp_path / "runs" / "small"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    (tmp_path / "small.toml").write_text(edit(SMALL))
    done = _univ("run", "small.toml", "--runs-dir", "runs", cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_missing_config_file_and_unfinished_run_dir_are_one_line_errors(tmp_path):
    done = _univ("run", "nope.toml", cwd=tmp_path)
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr
    done = _univ("report", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "no finished run" in done.stderr


def test_embedded_demo_config_is_valid():
    config = load_config()
    assert config.name == "demo" and len(config.seeds) == 4
    with pytest.raises(UniversalityError, match="seeds must be distinct"):
        parse_config({"seeds": [1, 1]})
