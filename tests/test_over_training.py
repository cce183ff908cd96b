"""Universality over training (`universality.dynamics`): planted emergence steps, persistence, CKA."""

import math

import pytest
import torch

from universality.dynamics import universality_over_training
from universality.errors import UniversalityError
from test_pipeline import SMALL

STEPS = [0, 10, 100, 1000]
MODELS, UNITS, TOKENS = ("a", "b", "c"), 32, 2000
# planted: unit -> the steps at which it is shared by every model (universal), else independent noise
SHARED = {**{u: {10, 100, 1000} for u in range(4)}, **{u: {100, 1000} for u in range(4, 8)}, 8: {10, 1000}}


def planted(step: int, units: int = UNITS):
    """Batches of step `step`: shared latents for the units universal then, independent noise otherwise."""
    z = torch.randn(TOKENS, units, generator=torch.Generator().manual_seed(1))
    acts = {}
    for index, model in enumerate(MODELS):
        noise = torch.randn(TOKENS, units, generator=torch.Generator().manual_seed(100 * step + index + 7))
        shared = torch.tensor([step in SHARED.get(u, ()) for u in range(units)])
        acts[model] = torch.where(shared, z + 0.05 * noise, noise)
    return [{m: {"mlp": x[i:i + 500]} for m, x in acts.items()} for i in range(0, TOKENS, 500)]


@pytest.fixture(scope="module")
def result():
    return universality_over_training({step: planted(step) for step in STEPS}, threshold=0.3, rotations=2)


def test_first_crossing_step_is_the_planted_one(result):
    units = result.units.set_index(["model", "unit"])
    for model in MODELS:
        for unit in range(UNITS):
            expected = min(SHARED[unit]) if unit in SHARED else math.nan
            got = units.loc[(model, unit), "first_universal_step"]
            assert (math.isnan(expected) and math.isnan(got)) or got == expected, (model, unit)
            assert units.loc[(model, unit), "final_universal"] == (unit in SHARED)
            assert units.loc[(model, unit), "stays_universal"] == (unit in SHARED and unit != 8)


def test_persistence_is_the_planted_share(result):
    shares = result.persistence.groupby("step").share.unique()
    # of the 9 final universal units: none at 0, units 0-3 and 8 at 10, 0-7 at 100, all at 1000
    assert [list(shares[s]) for s in STEPS] == [[0.0], [5 / 9], [8 / 9], [1.0]]
    assert (result.persistence.final_universal == 9).all()


def test_percent_universal_per_step(result):
    percent = result.layers.groupby("step").pct_universal.unique()
    assert [list(percent[s]) for s in STEPS] == [[0.0], [500 / 32], [800 / 32], [900 / 32]]


def test_cka_of_identical_checkpoints_is_one():
    same = planted(10)
    result = universality_over_training({0: same, 5: same, 9: planted(0)}, threshold=0.3)
    first = result.cka.query("step == 0")
    assert first.query("relation == 'next'").other_step.eq(5).all()
    assert first.query("relation == 'next'").cka.tolist() == pytest.approx([1.0] * 3)
    assert (first.query("relation == 'final'").cka < 0.5).all()  # 5 shared units of 32 against noise
    assert set(result.cka.step) == {0, 5}  # the final step has no later checkpoint


def test_different_architectures_between_checkpoints_is_one_line():
    with pytest.raises(UniversalityError, match="checkpoint step 0 has unit sets .*different architectures"):
        universality_over_training({0: planted(0, units=16), 10: planted(10)})


def test_one_shot_iterator_and_single_step_are_one_line():
    with pytest.raises(UniversalityError, match="pass a list or a callable"):
        universality_over_training({0: iter(planted(0)), 10: planted(10)})
    with pytest.raises(UniversalityError, match="at least 2 checkpoint steps"):
        universality_over_training({0: planted(0)})


def test_misaligned_tokens_between_checkpoints_is_one_line():
    short = [{m: {"mlp": s["mlp"][:100]} for m, s in batch.items()} for batch in planted(10)]
    with pytest.raises(UniversalityError, match="different token counts"):
        universality_over_training({0: planted(0), 10: short})


GROUPS = """
kind = "groups"
name = "dynamics"
seeds = [0, 1]
[task]
group = "S4"
[model]
arch = "mlp"
embed_dim = 32
hidden = 64
[train]
epochs = 1500  # both seeds generalise (epoch ~700) and end with a few universal units
train_fraction = 0.7
lr = 3e-2
log_every = 10
checkpoints = 5
threads = 1
[calibration]
enabled = false
[training_dynamics]
enabled = true
"""


def _config(text):
    import tomllib

    from universality.config import parse_config
    return parse_config(tomllib.loads(text))


@pytest.fixture(scope="module")
def group_run(tmp_path_factory):
    from universality.api import run_experiment
    root = tmp_path_factory.mktemp("dynamics")
    return root, run_experiment(_config(GROUPS), runs_dir=root / "runs")


def test_group_run_compares_every_kept_checkpoint_and_its_last_is_the_run(group_run):
    import pandas as pd
    _, result = group_run
    tables = result.run_dir / "tables"
    layers = pd.read_parquet(tables / "training_universality.parquet")
    assert sorted(layers.step.unique()) == [0, 1, 11, 131, 1500]  # checkpoint_epochs(1500, 5)
    final = layers[layers.step == 1500].set_index("model").pct_universal
    run = result.comparison.layers.set_index("model").pct_universal
    assert final.to_dict() == pytest.approx(run.to_dict())  # the last checkpoint is the trained model
    cka = pd.read_parquet(tables / "training_cka.parquet")
    assert len(cka) == 2 * 4 * 2 and cka.cka.between(0, 1 + 1e-9).all()
    persistence = pd.read_parquet(tables / "training_persistence.parquet")
    units = pd.read_parquet(tables / "training_units.parquet")
    assert len(units) == 2 * 64 and units.final_universal.sum() == result.comparison.units.universal.sum() > 0
    at_end = persistence[persistence.step == 1500]
    assert at_end.already_universal.tolist() == at_end.final_universal.tolist()
    assert persistence.groupby("model").final_universal.unique().map(len).eq(1).all()
    report = (result.run_dir / "report.html").read_text()
    assert "Universality over training" in report and "training_universality.png" in report


def test_group_rerun_skips_the_unchanged_dynamics_step(group_run, monkeypatch):
    import universality.pipeline._training_dynamics as step
    from universality.api import run_experiment
    root, _ = group_run
    monkeypatch.setattr(step, "universality_over_training", lambda *a, **k: pytest.fail("computed again"))
    run_experiment(_config(GROUPS + "[similarity]\nenabled = false\n"), runs_dir=root / "runs")


def test_a_step_that_is_no_checkpoint_is_one_line(tmp_path):
    from universality.api import run_experiment
    text = GROUPS.replace("enabled = true", "enabled = true\ncheckpoints = [0, 3]")
    with pytest.raises(UniversalityError, match=r"epoch 3 is not a checkpoint; the trainer keeps epochs \[0, 1, 11, 131, 1500\]"):
        run_experiment(_config(text), runs_dir=tmp_path)
    assert not (tmp_path / "dynamics").exists()


def test_emergence_is_placed_on_the_loss_curve(result):
    import pandas as pd

    from universality.report._training_section import emergence_table, mean_loss
    curves = {m: pd.DataFrame({"step": [0, 10, 100, 1000], "loss": [4.0 + d, 3.0 + d, 1.0 + d, 0.0 + d]})
              for m, d in zip(MODELS, (-0.5, 0.0, 0.5))}
    row = emergence_table(result.persistence, result.units, result.layers, mean_loss(curves)).iloc[0]
    # half of the 9 final universal units per seed are universal by step 10 (units 0-3 and 8)
    assert (row.emergence_step, row.median_first_crossing, row.share_staying) == (10, 10.0, pytest.approx(8 / 9))
    assert (row.loss_at_emergence, row.loss_drop_done) == (3.0, pytest.approx(0.25))
    assert row.final_universal_units == 27 and row.final_pct_universal == pytest.approx(900 / 32)


LANGUAGE = SMALL.replace("log_every = 10\n", "log_every = 10\ncheckpoints = 4\nthreads = 1\n") + """
[calibration]
enabled = false
[training_dynamics]
enabled = true
"""


def test_language_run_keeps_checkpoints_and_compares_each(tmp_path):
    import pandas as pd
    import torch

    from universality.api import run_experiment
    from universality.tasks import SyntheticLanguage
    from universality.train import load_checkpoint, load_checkpoint_models
    config = _config(LANGUAGE)
    result = run_experiment(config, runs_dir=tmp_path)
    layers = pd.read_parquet(result.run_dir / "tables" / "training_universality.parquet")
    assert sorted(layers.step.unique()) == [0, 1, 6, 40]  # checkpoint_epochs(40, 4)
    final = layers[layers.step == 40].set_index(["model", "unit_set"]).pct_universal
    assert final.to_dict() == pytest.approx(result.comparison.layers.set_index(["model", "unit_set"]).pct_universal.to_dict())
    cka = pd.read_parquet(result.run_dir / "tables" / "training_cka.parquet")
    assert len(cka) == 3 * 2 * 3 * 2  # seeds x layers x earlier steps x (next, final)
    language = SyntheticLanguage(config.language)
    shape = dict(vocab_size=language.vocab_size, n_ctx=config.language.seq_len)
    directory = result.run_dir / "models" / "seed-1"
    model, _ = load_checkpoint(directory, config.model, **shape)
    by_step = load_checkpoint_models(directory, config.model, **shape)
    assert sorted(by_step) == [0, 1, 6, 40]
    assert all(torch.equal(a, b) for a, b in zip(by_step[40].state_dict().values(), model.state_dict().values()))
    assert "Universality over training" in (result.run_dir / "report.html").read_text()


def test_dynamics_without_kept_checkpoints_is_one_line(tmp_path):
    from universality.api import run_experiment
    with pytest.raises(UniversalityError, match="needs at least 2 checkpoints.*raise train.checkpoints"):
        run_experiment(_config(LANGUAGE.replace("checkpoints = 4", "checkpoints = 0")), runs_dir=tmp_path)
