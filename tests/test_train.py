import hashlib
"""Invariants of seed training and checkpoints, on a language and model small enough to train in seconds."""

import math

import pytest
import torch

from universality.config import LanguageConfig, ModelConfig, TrainConfig
from universality.errors import UniversalityError
from universality.models import TinyTransformer
from universality.tasks import SyntheticLanguage
from universality.train import (
    checkpoint_epochs, learning_rate, load_checkpoint, save_checkpoint, train_seed, train_seeds, training_batches,
)

torch.set_num_threads(1)

LANGUAGE = SyntheticLanguage(LanguageConfig(seq_len=24, position_period=8, n_classes=4,
                                            tokens_per_class=3, repeat_len=4))
MODEL = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_mlp=64)
TRAIN = TrainConfig(steps=150, batch_size=16, lr=1e-2, warmup_steps=10, log_every=10, threads=1)
SHORT = TRAIN.model_copy(update={"steps": 12})


@pytest.fixture(scope="module")
def trained():
    return train_seed(LANGUAGE, MODEL, TRAIN, seed=0)


def _same_weights(a, b):
    return all(torch.equal(tensor, b.state_dict()[name]) for name, tensor in a.state_dict().items())


def test_loss_falls_well_below_uniform_guessing(trained):
    uniform = math.log(LANGUAGE.vocab_size)
    assert abs(trained.curve[0]["loss"] - uniform) < 0.3  # initialisation predicts ~uniformly
    final = sum(point["loss"] for point in trained.curve[-3:]) / 3
    assert final < 0.65 * uniform, trained.curve


def test_curve_has_every_log_every_step_and_the_last(trained):
    assert [point["step"] for point in trained.curve] == list(range(0, 150, 10)) + [149]
    assert trained.seed == 0 and trained.seconds > 0 and not trained.model.training


def test_same_seed_gives_identical_weights_and_curve():
    a, b = train_seed(LANGUAGE, MODEL, SHORT, seed=3), train_seed(LANGUAGE, MODEL, SHORT, seed=3)
    assert _same_weights(a.model, b.model)
    assert a.curve == b.curve


def test_different_seeds_give_different_weights():
    a, b = train_seed(LANGUAGE, MODEL, SHORT, seed=3), train_seed(LANGUAGE, MODEL, SHORT, seed=4)
    assert not torch.equal(a.model.embed.weight, b.model.embed.weight)


def test_shared_data_gives_every_seed_the_same_rows_per_seed_data_does_not():
    shared = SHORT.model_copy(update={"data": "shared"})
    for a, b in zip(training_batches(LANGUAGE, shared, 0), training_batches(LANGUAGE, shared, 1)):
        assert torch.equal(a, b)
    first = [next(training_batches(LANGUAGE, SHORT, seed)) for seed in (0, 1)]
    assert not torch.equal(first[0], first[1])
    assert len(list(training_batches(LANGUAGE, TRAIN, 0))) == TRAIN.steps


def test_training_leaves_the_global_rng_untouched():
    torch.manual_seed(9)
    expected = torch.rand(2)
    torch.manual_seed(9)
    train_seed(LANGUAGE, MODEL, SHORT.model_copy(update={"steps": 2}), seed=0)
    assert torch.equal(torch.rand(2), expected)


def test_train_seeds_equals_train_seed_per_seed_and_reports_every_step():
    calls = []
    models = train_seeds(LANGUAGE, MODEL, SHORT, [5, 6], on_step=lambda *args: calls.append(args))
    assert [m.seed for m in models] == [5, 6]
    assert _same_weights(models[1].model, train_seed(LANGUAGE, MODEL, SHORT, seed=6).model)
    assert [(seed, step) for seed, step, _ in calls] == [(s, k) for s in (5, 6) for k in range(12)]


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    rates = [learning_rate(step, TRAIN) for step in range(TRAIN.steps)]
    assert all(a < b for a, b in zip(rates[:10], rates[1:11]))
    assert max(rates) == pytest.approx(TRAIN.lr)
    assert rates[-1] == pytest.approx(TRAIN.lr / 10)


def test_checkpoint_round_trip_gives_identical_logits(trained, tmp_path):
    directory = tmp_path / "models" / "seed-0"
    save_checkpoint(directory, TinyTransformer(MODEL, vocab_size=LANGUAGE.vocab_size, n_ctx=24), {"old": 1})
    save_checkpoint(directory, trained.model, {"seed": 0, "curve": trained.curve})  # replaces the old one
    model, metadata = load_checkpoint(directory, MODEL, vocab_size=LANGUAGE.vocab_size, n_ctx=24)
    tokens = LANGUAGE.sample(4, seed=1).tokens
    with torch.no_grad():
        assert torch.equal(model(tokens), trained.model(tokens))
    assert metadata.pop("weights_sha256") == hashlib.sha256((directory / "weights.safetensors").read_bytes()).hexdigest()
    assert metadata == {"seed": 0, "curve": trained.curve}
    assert sorted(p.name for p in directory.parent.iterdir()) == ["seed-0"]  # no temporaries left


def test_loading_a_wrong_shape_raises_naming_the_tensor(trained, tmp_path):
    save_checkpoint(tmp_path / "ckpt", trained.model, {})
    wider = MODEL.model_copy(update={"d_mlp": 48})
    with pytest.raises(UniversalityError, match=r"'blocks\.0\.mlp\.fc_in\.weight' has shape \[64, 32\]"):
        load_checkpoint(tmp_path / "ckpt", wider, vocab_size=LANGUAGE.vocab_size, n_ctx=24)
    with pytest.raises(UniversalityError, match="pos_embed.weight"):
        load_checkpoint(tmp_path / "ckpt", MODEL, vocab_size=LANGUAGE.vocab_size, n_ctx=32)


def test_loading_a_missing_checkpoint_raises(tmp_path):
    with pytest.raises(UniversalityError, match="has no weights.safetensors"):
        load_checkpoint(tmp_path / "nowhere", MODEL, vocab_size=LANGUAGE.vocab_size, n_ctx=24)


def test_kept_checkpoints_are_the_initialisation_and_the_final_model():
    trained = train_seed(LANGUAGE, MODEL, SHORT.model_copy(update={"checkpoints": 3}), seed=3)
    steps = SHORT.steps
    assert sorted(trained.checkpoints) == checkpoint_epochs(steps, 3) and {0, steps} <= set(trained.checkpoints)
    initial = TinyTransformer(MODEL, vocab_size=LANGUAGE.vocab_size, n_ctx=24, seed=3).state_dict()
    assert all(torch.equal(trained.checkpoints[0][name], tensor) for name, tensor in initial.items())
    final = trained.model.state_dict()
    assert all(torch.equal(trained.checkpoints[steps][name], tensor) for name, tensor in final.items())
    assert not all(torch.equal(trained.checkpoints[0][name], tensor) for name, tensor in final.items())
