"""Universality over training in a pretrained (family) run: each model's checkpoints listed as local
model directories with their steps ([[training_dynamics.seeds]]). Tiny GPT-2s saved here, offline: at
step 0 two independent random models, at step 10 a model and its neuron-permuted copy (every live
neuron has an exact twin), which are also the run's models."""

import copy
import tomllib

import pandas as pd
import pytest
import torch

from _hf_tiny import SENTENCES, build, permute_mlp
from universality import UniversalityError
from universality.api import run_experiment
from universality.config import parse_config


def _series(model: str, directories) -> str:
    listed = ", ".join(f'"{d}"' for d in directories)
    return f'[[training_dynamics.seeds]]\nmodel = "{model}"\nsteps = [0, 10]\ndirectories = [{listed}]\n'


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """(root, config text): models a, b (b = a with permuted MLP neurons) and their step-0 checkpoints."""
    root = tmp_path_factory.mktemp("family")
    model, tokenizer = build("gpt2", root / "a", seed=2)
    twin = copy.deepcopy(model)
    permute_mlp(twin, "gpt2", [torch.randperm(128, generator=torch.Generator().manual_seed(l)) for l in range(2)])
    twin.save_pretrained(root / "b")
    tokenizer.save_pretrained(root / "b")
    for name, seed in (("a-step0", 0), ("b-step0", 1)):
        build("gpt2", root / name, seed=seed, tokenizer=tokenizer)
    (root / "text.txt").write_text("\n".join(SENTENCES * 10))
    text = (f'kind = "pretrained"\nname = "family"\nmodels = ["{root / "a"}", "{root / "b"}"]\nneurons = false\n'
            f'threads = 1\n[data]\nsource = "{root / "text.txt"}"\nseq_len = 16\nrows = 24\n[collect]\n'
            f'batch_rows = 8\n[calibration]\nenabled = false\n[posterior]\nenabled = false\n'
            f'[training_dynamics]\nenabled = true\n')
    return root, text


def test_listed_checkpoints_are_compared_at_each_step(family, tmp_path):
    root, text = family
    text += _series(str(root / "a"), [root / "a-step0", root / "a"]) + _series(str(root / "b"), [root / "b-step0",
                                                                                                 root / "b"])
    result = run_experiment(parse_config(tomllib.loads(text)), runs_dir=tmp_path)
    tables = result.run_dir / "tables"
    layers = pd.read_parquet(tables / "training_universality.parquet")
    assert sorted(layers.step.unique()) == [0, 10]
    final = layers[layers.step == 10].set_index(["model", "unit_set"]).pct_universal
    run = result.comparison.layers.set_index(["model", "unit_set"]).pct_universal
    assert final.to_dict() == pytest.approx(run.to_dict())  # the step-10 checkpoints are the run's models
    # exact twins at step 10 (though a 128-wide layer over a 32-wide residual has a high rotation baseline,
    # so few clear 0.5), independent random models at step 0
    excess = layers.pivot_table(index=["model", "unit_set"], columns="step", values="median_excess")
    assert (excess[10] > excess[0] + 0.05).all()
    units = pd.read_parquet(tables / "training_units.parquet")
    assert units.final_universal.sum() == result.comparison.units.universal.sum()
    assert set(units.first_universal_step.dropna()) <= {0.0, 10.0}


def test_a_checkpoint_of_another_architecture_is_one_line_before_anything_is_written(family, tmp_path):
    root, text = family
    build("gpt_neox", tmp_path / "neox")  # 64 MLP neurons per layer where the GPT-2s have 128
    text += _series(str(root / "a"), [tmp_path / "neox", root / "a"]) + _series(str(root / "b"), [root / "b-step0",
                                                                                                   root / "b"])
    with pytest.raises(UniversalityError) as error:
        run_experiment(parse_config(tomllib.loads(text)), runs_dir=tmp_path / "runs")
    assert "\n" not in str(error.value)
    assert ("(step 0 of a) has unit sets {'blocks.0.mlp.hook_post': 64, 'blocks.1.mlp.hook_post': 64}, a has "
            "{'blocks.0.mlp.hook_post': 128, 'blocks.1.mlp.hook_post': 128}: checkpoints of different architectures "
            "cannot be compared over training; list checkpoints of a's architecture") in str(error.value)
    assert not (tmp_path / "runs").exists()
