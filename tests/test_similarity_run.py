"""Representation similarity inside a run (`[similarity]`): the state metrics from the run's saved
state, debiased CKA and mutual k-NN from the reservoir of token rows the same pass kept (saved with
the moments, so a resumed run continues it: `Reservoir.state_dict`), a token-shuffled null for every
score, and one line, exit 2, nothing written, for a reservoir the stream cannot fill."""

import os
import subprocess
import sys
import tomllib

import numpy as np
import pandas as pd
import pytest
import torch

from test_pipeline import SMALL
from test_similarity import LAYOUT, _batches, _fill, _same, _stream
from universality import UniversalityError
from universality.api import run_experiment
from universality.collect import stream_activations
from universality.config import parse_config
from universality.models import adapt
from universality.moments import load_moments
from universality.similarity import Reservoir, debiased_cka, linear_cka, mutual_knn, procrustes
from universality.tasks import SyntheticLanguage
from universality.train import load_checkpoint


def test_a_reservoir_saved_mid_stream_and_restored_continues_to_the_one_pass_sample():
    data = _stream(300)
    batches = _batches(data, [0, 70, 130, 300])
    saved = _fill(batches[:2], size=64).state_dict()
    restored = Reservoir.from_state_dict(saved, LAYOUT)
    for batch, _ in batches[2:]:
        restored.update(batch)
    assert _same(restored, _fill(batches, size=64)) and restored.count_ == 300


def _offsets(layout, model, unit_set):
    start = 0
    for name, units in layout[model].items():
        if name == unit_set:
            return slice(start, start + units)
        start += units


def test_a_run_scores_every_metric_from_its_state_and_the_reservoir_its_pass_kept(tmp_path):
    """State metrics equal the library on the saved state; the reservoir holds the streamed activations
    at its positions (streamed again here from the saved models) and the token metrics equal the library
    on its rows; every score has a finite null below it."""
    text = SMALL.replace("[train]\n", "[train]\nthreads = 1\n") + '\n[scale]\nmemory_budget = "none"\n'
    config = parse_config(tomllib.loads(text + "[calibration]\nenabled = false\n[similarity]\nreservoir = 500\n"
                                               "nulls = 2\n"))
    run = run_experiment(config, runs_dir=tmp_path)
    table = pd.read_parquet(run.run_dir / "tables" / "similarity.parquet")
    acc, manifest = load_moments(run.run_dir / "moments")
    layout = acc.layout
    sample = Reservoir.from_state_dict(manifest["companions"], layout)
    assert (sample.size, sample.count_, len(sample.positions_)) == (500, acc.count_, 500)
    # 1) the reservoir saw the pass's batches: a fresh reservoir fed the same stream keeps the same rows
    language = SyntheticLanguage(config.language)
    tokens = language.sample(config.collect.rows, seed=config.collect.eval_seed).tokens
    shape = dict(vocab_size=language.vocab_size, n_ctx=config.language.seq_len)
    adapters = {m: adapt(load_checkpoint(run.run_dir / "models" / m, config.model, **shape)[0], name=m,
                         bos_token_id=language.bos) for m in layout}
    again = Reservoir(layout, 500, seed=0)
    for batch in stream_activations(adapters, tokens, unit_sets=list(layout["seed-0"]),
                                    batch_rows=config.collect.batch_rows, drop_tokens=[language.bos]):
        again.update(batch)
    assert np.array_equal(again.positions_, sample.positions_)
    for m, sets in sample.rows_.items():
        for s, rows in sets.items():
            torch.testing.assert_close(rows, again.rows_[m][s], rtol=1e-5, atol=1e-5)
    # 2) every pair across models, every metric, each against the library on the state or the rows
    pairs = {(a, s, b, t) for a in layout for b in layout if list(layout).index(a) < list(layout).index(b)
             for s in layout[a] for t in layout[b]}
    assert set(map(tuple, table[["model_a", "unit_set_a", "model_b", "unit_set_b"]].values)) == pairs
    assert set(table.metric) >= {"cka", "procrustes", "debiased_cka", "mutual_knn"}
    assert table.null_mean.notna().all() and table.null_std.notna().all()
    assert (table.value > table.null_mean).all()
    rows = sample.rows_
    for (ma, sa, mb, sb), scores in table.groupby(["model_a", "unit_set_a", "model_b", "unit_set_b"]):
        value = dict(zip(scores.metric, scores.value))
        cross = acc.cross(ma, mb)[_offsets(layout, ma, sa), _offsets(layout, mb, sb)].double()
        grams = [acc.gram_[ma][sa].double(), acc.gram_[mb][sb].double()]
        assert value["cka"] == pytest.approx(float(linear_cka(*grams, cross, acc.count_)), abs=1e-9)
        assert value["procrustes"] == pytest.approx(float(procrustes(*grams, cross, acc.count_)), abs=1e-9)
        assert value["debiased_cka"] == pytest.approx(debiased_cka(rows[ma][sa], rows[mb][sb]), abs=1e-9)
        assert value["mutual_knn"] == pytest.approx(mutual_knn(rows[ma][sa], rows[mb][sb], k=10), abs=1e-12)
    html = (run.run_dir / "report.html").read_text()
    assert "Representation similarity across models" in html and "similarity_layers.png" in html


def test_a_reservoir_larger_than_the_stream_is_one_line_exit_2_and_nothing_written(tmp_path):
    (tmp_path / "small.toml").write_text(SMALL + "[similarity]\nreservoir = 5000\n")
    done = subprocess.run([sys.executable, "-m", "universality.cli", "run", "small.toml", "--runs-dir", "runs"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("error: similarity.reservoir = 5000 rows, but the run streams 2976 tokens; set "
                                   "reservoir to at most 2976, or \"auto\"")
    assert not (tmp_path / "runs").exists()


def test_k_at_least_the_reservoir_rows_is_one_line_before_anything_is_written(tmp_path):
    config = parse_config(tomllib.loads(SMALL + "[similarity]\nreservoir = 10\nk = 10\n"))
    with pytest.raises(UniversalityError) as error:
        run_experiment(config, runs_dir=tmp_path / "runs")
    assert str(error.value) == ("similarity.k = 10 neighbours need more than 10 reservoir rows (a row is not its own "
                                "neighbour), the reservoir keeps 10; lower k or raise reservoir")
    assert not (tmp_path / "runs").exists()
