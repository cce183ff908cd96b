"""A language run with `[sae]`: SAEs trained per seed, width and SAE seed, one loaded from SAELens files,
compared at three levels; tables, report, resume without retraining, and bad input in one line."""

import json
import math
import tomllib

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from universality.api import run_experiment
from universality.config import parse_config
from universality.saes import SAE, evaluate, load
from test_pipeline import _univ

SAE_RUN = """
name = "saes"
seeds = [0, 1]
[language]
seq_len = 32
n_classes = 8
tokens_per_class = 8
[model]
d_model = 32
n_layers = 1
n_heads = 2
d_mlp = 64
activation = "relu"
[train]
steps = 60
threads = 1
[collect]
rows = 64
batch_rows = 32
[compare]
rotations = 1
[calibration]
rotations = 4
[similarity]
enabled = false
[posterior]
enabled = false
[sae]
enabled = true
unit_set = "blocks.0.mlp.hook_post"
widths = [64, 128]
seeds = [0, 1]
k = 4
rows = 64
steps = 60
batch_size = 256
eval_rows = 64
"""


def _saelens(directory, d_in=64, latents=32, seed=0, nan=False):
    """A small SAELens (6.x layout) SAE: cfg.json + sae_weights.safetensors, W_enc [d_in, d_sae]."""
    g = torch.Generator().manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    w_dec = torch.nn.functional.normalize(torch.randn(latents, d_in, generator=g), dim=1)
    weights = {"W_enc": w_dec.T.contiguous(), "b_enc": torch.zeros(latents), "W_dec": w_dec, "b_dec": torch.zeros(d_in)}
    if nan:
        weights["W_dec"][0, 0] = float("nan")
    save_file(weights, str(directory / "sae_weights.safetensors"))
    (directory / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": d_in, "d_sae": latents,
                                                    "apply_b_dec_to_input": True, "metadata": {"hook_name": "x"}}))
    return directory


@pytest.fixture(scope="module")
def sae_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sae_run")
    loaded = _saelens(root / "other_sae")
    text = SAE_RUN + f'[[sae.load]]\nmodel = "seed-1"\npath = "{loaded}"\n'
    config = parse_config(tomllib.loads(text))
    return root, config, run_experiment(config, runs_dir=root / "runs")


def test_a_run_writes_the_three_levels_for_every_pair_and_a_report_section(sae_run):
    _, _, run = sae_run
    tables = {name: pd.read_parquet(run.run_dir / "tables" / f"{name}.parquet")
              for name in ("saes", "sae_pairs", "sae_latents", "sae_features")}
    saes = tables["saes"]
    assert len(saes) == 2 * 2 * 2 + 1 and "seed-1/loaded-0" in set(saes.sae)
    assert saes[saes.seed >= 0].fvu.between(0, 1).all() and (saes[saes.seed >= 0].l0 <= 4 + 1e-9).all()
    assert np.isfinite(saes.ce_increase).all()
    pairs = tables["sae_pairs"]
    names = list(saes.sae)
    assert set(zip(pairs.sae_a, pairs.sae_b)) == {(a, b) for a in names for b in names if a != b}
    levels = pairs.groupby(["sae_a", "sae_b"])["level"].apply(set)
    for (a, b), found in levels.items():  # linear only across models, where the Procrustes map is not the identity
        same = a.split("/")[0] == b.split("/")[0]
        assert found == ({"direct", "functional"} if same else {"direct", "linear", "functional"})
    across = pairs[~pairs.same_model]
    assert across.fvu_swap.notna().all() and pairs[pairs.same_model].fvu_swap.isna().all()
    assert (pairs.null_mean_mcs.notna()).all()
    latents = tables["sae_latents"]
    assert len(latents) == sum(saes.width.iloc[i] * (len(saes) - 1) for i in range(len(saes)))
    assert {"mcs_dec", "mcs_enc", "match", "shared", "act_corr", "frequency"} <= set(latents.columns)
    features = tables["sae_features"]
    assert len(features) == saes.width.sum() and {"best_feature_set", "universal"} <= set(features.columns)
    html = (run.run_dir / "report.html").read_text()
    assert "Do the SAEs learn universal features?" in html and (run.run_dir / "plots" / "sae_mcs.png").is_file()


def test_the_saved_saes_reproduce_the_tables_measures(sae_run):
    """Each trained SAE is saved in our format; reloaded, `evaluate` on the run's own evaluation rows gives
    the table's FVU (the pass measured it batch by batch)."""
    from universality.models import TinyTransformer, adapt
    from universality.collect import stream_activations
    from universality.tasks import SyntheticLanguage
    from universality.train import load_checkpoint
    _, config, run = sae_run
    language = SyntheticLanguage(config.language)
    model, _ = load_checkpoint(run.run_dir / "models" / "seed-0", config.model, vocab_size=language.vocab_size,
                               n_ctx=config.language.seq_len)
    adapter = adapt(model, name="seed-0", bos_token_id=language.bos)
    tokens = language.sample(config.collect.rows, seed=config.collect.eval_seed).tokens[:config.sae.eval_rows]
    stream = [b["seed-0"][config.sae.unit_set] for b in stream_activations(
        {"seed-0": adapter}, tokens, unit_sets=[config.sae.unit_set], batch_rows=32, drop_tokens=[language.bos])]
    saes = pd.read_parquet(run.run_dir / "tables" / "saes.parquet").set_index("sae")
    sae = load(run.run_dir / "saes" / "seed-0" / config.sae.unit_set / "128-seed1")
    assert sae.latents == 128 and sae.activation == "topk" and sae.k == 4
    assert math.isclose(evaluate(sae, stream)["fvu"], saes.loc["seed-0/128-seed1", "fvu"], rel_tol=1e-6)


def test_a_changed_comparison_setting_recomputes_the_tables_without_retraining(sae_run, monkeypatch):
    import universality.pipeline._saes as step
    root, config, run = sae_run
    weights = {p: p.read_bytes() for p in (run.run_dir / "saes").rglob("*.safetensors")}
    assert len(weights) == 8
    monkeypatch.setattr(step, "train", lambda *args, **kwargs: pytest.fail("an SAE was trained again"))
    changed = config.model_copy(update={"sae": config.sae.model_copy(update={"threshold": 0.3})})
    again = run_experiment(changed, runs_dir=root / "runs")
    assert {p: p.read_bytes() for p in (again.run_dir / "saes").rglob("*.safetensors")} == weights
    pairs = pd.read_parquet(again.run_dir / "tables" / "sae_pairs.parquet")
    assert (pairs.threshold == 0.3).all()


@pytest.mark.parametrize("edit, message", [
    (lambda s, d: s.replace('unit_set = "blocks.0.mlp.hook_post"', 'unit_set = "blocks.0.mlp.hook_postt"'),
     "sae.unit_set"),
    (lambda s, d: s + f'[[sae.load]]\nmodel = "seed-0"\npath = "{_saelens(d / "wide", d_in=32)}"\n', "reads d_in 32"),
    (lambda s, d: s + f'[[sae.load]]\nmodel = "seed-0"\npath = "{_saelens(d / "nan", nan=True)}"\n', "NaN"),
    (lambda s, d: s + f'[[sae.load]]\nmodel = "seed-0"\npath = "{(d / "empty").mkdir() or d / "empty"}"\n',
     "no SAE files found"),
    (lambda s, d: s.replace("widths = [64, 128]", "widths = [0]"), "sae.widths"),
    (lambda s, d: s + f'[[sae.load]]\nmodel = "seed-7"\npath = "{_saelens(d / "x")}"\n', "not a model of this run"),
])
def test_bad_sae_input_is_one_line_exit_2_and_touches_nothing(tmp_path, edit, message):
    (tmp_path / "bad.toml").write_text(edit(SAE_RUN, tmp_path))
    done = _univ("run", "bad.toml", "--runs-dir", "runs", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "runs").exists()
