"""Invariants of group tasks, the group MLP and transformer, and their full-batch trainer."""

import time

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from universality.errors import UniversalityError
from universality.groups import make_group
from universality.models import GroupMLP, GroupTransformer
from universality.tasks import composition_task, parse_word, word_task
from universality.train import (
    GroupMLPConfig, GroupTrainConfig, GroupTransformerConfig, build_group_model, checkpoint_epochs,
    load_group_model, save_group_model, train_group_seed, train_group_seeds,
)

torch.set_num_threads(1)

S3, S4 = make_group("S3"), make_group("S4")
TINY = GroupMLPConfig(embed_dim=8, hidden=16)
SHORT = GroupTrainConfig(epochs=12, log_every=5, checkpoints=4, threads=1)
# groks S4 composition in 425 epochs (~0.3 s on one thread); seeds 0-5 all grok within 700 epochs
GROK_MODEL = GroupMLPConfig(embed_dim=32, hidden=64)
GROK_TRAIN = GroupTrainConfig(epochs=3000, lr=3e-2, train_fraction=0.7, log_every=25, checkpoints=5,
                              stop_at_test_accuracy=1.0, threads=1)


def _pairs(order):
    pairs = torch.arange(order * order)
    return pairs // order, pairs % order


def _one_line_error(call, match):
    with pytest.raises(UniversalityError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


# --- tasks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("word, letters", [
    ("a b", [("a", 1), ("b", 1)]),
    ("a^2 b", [("a", 2), ("b", 1)]),
    ("  b a b^-1   a^-1 ", [("b", 1), ("a", 1), ("b", -1), ("a", -1)]),
    ("a^0 b^+3", [("a", 0), ("b", 3)]),
])
def test_valid_words_parse_to_letters_and_exponents(word, letters):
    assert parse_word(word) == letters


@pytest.mark.parametrize("word, match", [
    ("", "is empty"), ("   ", "is empty"), ("a c", "letter 'c'"), ("ab", "joins letters"),
    ("a^", "malformed"), ("a^x", "malformed"), ("a^-", "malformed"), ("2", "malformed"), ("a^1.5", "malformed"),
])
def test_invalid_words_raise_one_line_naming_the_token(word, match):
    _one_line_error(lambda: word_task(S3, word, 0.5, seed=0), match)


@pytest.mark.parametrize("fraction", [0, 0.0, 1, 1.0, -0.2, 1.5, float("nan")])
def test_train_fraction_outside_the_open_unit_interval_raises(fraction):
    _one_line_error(lambda: composition_task(S3, fraction, seed=0), "train_fraction")
    _one_line_error(lambda: GroupTrainConfig(train_fraction=fraction), "train_fraction")


def test_a_fraction_leaving_no_test_pair_raises():
    _one_line_error(lambda: composition_task(S3, 0.99, seed=0), "at least one train and one test pair")


def test_pairs_enumerate_the_group_squared_a_major():
    task = composition_task(S4, 0.6, seed=0)
    left, right = _pairs(24)
    assert torch.equal(task.left, left) and torch.equal(task.right, right)
    assert task.left.dtype == task.right.dtype == task.target.dtype == torch.int64
    assert task.train.dtype == torch.bool


def test_split_has_exact_size_and_is_deterministic_per_seed():
    task = composition_task(S4, 0.6, seed=3)
    assert int(task.train.sum()) == round(0.6 * 576) == 346
    assert torch.equal(task.train, composition_task(S4, 0.6, seed=3).train)
    assert not torch.equal(task.train, composition_task(S4, 0.6, seed=4).train)
    assert int(composition_task(S3, 0.5, seed=0).train.sum()) == 18


def test_composition_targets_are_the_cayley_table():
    task = composition_task(S4, 0.6, seed=0)
    assert np.array_equal(task.target.view(24, 24).numpy(), S4.table)


def test_word_targets_match_the_table_evaluated_by_hand():
    table, inverse = S4.table, S4.inverse
    words = {
        "a b a^-1": lambda a, b: table[table[a, b], inverse[a]],
        "b a b^-1 a^-1": lambda a, b: table[table[table[b, a], inverse[b]], inverse[a]],
        "a^2 b": lambda a, b: table[table[a, a], b],
        "b^-2": lambda a, b: inverse[table[b, b]],
    }
    for word, by_hand in words.items():
        target = word_task(S4, word, 0.6, seed=0).target.view(24, 24)
        expected = [[by_hand(a, b) for b in range(24)] for a in range(24)]
        assert np.array_equal(target.numpy(), np.array(expected)), word


# --- models --------------------------------------------------------------------------------------

def test_mlp_table_shortcut_equals_naive_concat_forward():
    model = GroupMLP(24, embed_dim=32, hidden=64, seed=1)
    left, right = _pairs(24)
    concat = torch.cat([model.embed_left[left], model.embed_right[right]], dim=1)  # [pairs, 64]
    naive = model.unembed(F.relu(concat @ model.linear.weight.T))  # [pairs, 24]
    assert torch.allclose(model(left, right), naive, rtol=1e-6, atol=1e-6)


def test_mlp_hooks_expose_pre_and_post_activations_per_pair():
    model = GroupMLP(6, embed_dim=8, hidden=16)
    seen = {}
    for name, hook in model.hook_points().items():
        hook.register_forward_hook(lambda module, inputs, output, name=name: seen.__setitem__(name, output))
    left, right = _pairs(6)
    model(left, right)
    table_left, table_right = model.hidden_tables()
    assert model.unit_sets() == {"mlp.hook_pre": 16, "mlp.hook_post": 16}
    assert torch.allclose(seen["mlp.hook_pre"], table_left[left] + table_right[right])
    assert torch.equal(seen["mlp.hook_post"], F.relu(seen["mlp.hook_pre"]))


def test_models_are_seeded_and_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = GroupMLP(6, seed=0), GroupMLP(6, seed=0), GroupMLP(6, seed=1)
    GroupTransformer(6, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.linear.weight, b.linear.weight) and not torch.equal(a.linear.weight, c.linear.weight)


def test_transformer_gives_logits_per_pair_and_hook_shapes():
    model = GroupTransformer(6, d_model=16, n_heads=2, d_head=8, d_mlp=32)
    seen = {}
    for name, hook in model.hook_points().items():
        hook.register_forward_hook(lambda module, inputs, output, name=name: seen.__setitem__(name, output.shape))
    left, right = _pairs(6)
    assert model(left, right).shape == (36, 6)
    assert seen == {"blocks.0.attn.hook_pattern": (36, 2, 3), "blocks.0.mlp.hook_pre": (36, 32),
                    "blocks.0.mlp.hook_post": (36, 32)}
    assert model.unit_sets() == {"blocks.0.mlp.hook_pre": 32, "blocks.0.mlp.hook_post": 32}


def test_mismatched_pair_tensors_raise():
    _one_line_error(lambda: GroupMLP(6)(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long)),
                    "one shape")


# --- training ------------------------------------------------------------------------------------

def test_float64_loss_gradients_match_a_float64_model():
    task = composition_task(S4, 0.6, seed=0)
    left, right, target = task.left[task.train], task.right[task.train], task.target[task.train]
    model = GroupMLP(24, embed_dim=32, hidden=64, seed=0)
    reference = GroupMLP(24, embed_dim=32, hidden=64, seed=0).double()
    for side in (model, reference):
        F.cross_entropy(side(left, right).double(), target).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert ((p.grad.double() - q.grad).norm() / q.grad.norm()).item() < 1e-5, name


def test_one_trainer_epoch_is_one_adamw_step_on_the_float64_loss():
    task = composition_task(S3, 0.6, seed=0)
    config = SHORT.model_copy(update={"epochs": 1})
    trained = train_group_seed(task, TINY, config, seed=2)
    model = build_group_model(TINY, 6, seed=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    loss = F.cross_entropy(model(task.left[task.train], task.right[task.train]).double(), task.target[task.train])
    loss.backward()
    optimizer.step()
    assert trained.curve[0]["train_loss"] == pytest.approx(loss.item(), rel=1e-12)
    for name, tensor in model.state_dict().items():
        assert torch.equal(trained.model.state_dict()[name], tensor), name


def test_grokfast_with_zero_lambda_equals_plain_training():
    task = composition_task(S3, 0.6, seed=0)
    plain = train_group_seed(task, TINY, SHORT, seed=0)
    filtered = train_group_seed(task, TINY, SHORT.model_copy(update={"grokfast": True, "grokfast_lambda": 0.0}),
                                seed=0)
    boosted = train_group_seed(task, TINY, SHORT.model_copy(update={"grokfast": True}), seed=0)
    assert torch.equal(plain.model.linear.weight, filtered.model.linear.weight)
    assert not torch.equal(plain.model.linear.weight, boosted.model.linear.weight)


def test_curve_checkpoints_and_determinism():
    task = composition_task(S3, 0.6, seed=0)
    a, b = train_group_seeds(task, TINY, SHORT, seeds=[0, 1])
    again = train_group_seed(task, TINY, SHORT, seed=0)
    assert [p["epoch"] for p in a.curve] == [0, 5, 10, 12]
    assert set(a.curve[0]) == {"epoch", "train_loss", "test_loss", "train_acc", "test_acc"}
    assert sorted(a.checkpoints) == checkpoint_epochs(12, 4) == [0, 1, 3, 12]
    assert all(t.dtype == torch.float32 for t in a.checkpoints[3].values())
    assert torch.equal(a.checkpoints[12]["linear.weight"], a.model.linear.weight)
    assert a.curve == again.curve and not torch.equal(a.model.linear.weight, b.model.linear.weight)
    assert not a.model.training and a.seconds > 0


def test_task_and_config_must_agree_on_the_train_fraction():
    task = composition_task(S3, 0.5, seed=0)
    _one_line_error(lambda: train_group_seed(task, TINY, SHORT, seed=0), "train_fraction 0.5")


def test_config_errors_are_one_line():
    _one_line_error(lambda: GroupTrainConfig(epoch=10), "unknown key 'epoch'; valid keys")
    _one_line_error(lambda: GroupTrainConfig(epochs="10"), "'epochs'")
    _one_line_error(lambda: GroupTrainConfig(betas=(0.9, 1.0)), "betas")
    assert GroupTrainConfig(betas=[0.9, 0.99]).betas == (0.9, 0.99)  # lists from JSON / TOML


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    task = word_task(S3, "a b a^-1", 0.6, seed=1)
    directory = tmp_path / "groups" / "seed-0"
    for model_config in (TINY, GroupTransformerConfig(d_model=8, n_heads=2, d_head=4, d_mlp=16)):
        trained = train_group_seed(task, model_config, SHORT, seed=0)
        save_group_model(directory, trained, task)
        loaded, metadata = load_group_model(directory)
        with torch.no_grad():
            assert torch.equal(loaded.model(task.left, task.right), trained.model(task.left, task.right))
        assert loaded.curve == trained.curve and loaded.model_config == model_config and loaded.config == SHORT
        assert sorted(loaded.checkpoints) == sorted(trained.checkpoints)
        assert torch.equal(loaded.checkpoints[3]["unembed.weight"], trained.checkpoints[3]["unembed.weight"])
        assert metadata["task"] == {"group": "S3", "order": 6, "word": "a b a^-1", "train_fraction": 0.6,
                                    "split_seed": 1}
    assert sorted(p.name for p in directory.parent.iterdir()) == ["seed-0"]  # no temporaries left
    _one_line_error(lambda: load_group_model(tmp_path / "nowhere"), "has no weights.safetensors")


def test_small_group_groks_within_seconds():
    task = composition_task(S4, GROK_TRAIN.train_fraction, seed=0)
    start = time.perf_counter()
    trained = train_group_seed(task, GROK_MODEL, GROK_TRAIN, seed=0)
    seconds = time.perf_counter() - start
    assert trained.epochs_to_grok is not None and trained.curve[-1]["test_acc"] >= 0.99, trained.curve[-1]
    stopped = next(p["epoch"] for p in trained.curve if p["test_acc"] >= GROK_TRAIN.stop_at_test_accuracy)
    assert trained.curve[-1]["epoch"] == stopped < GROK_TRAIN.epochs  # stopped early, extra_epochs = 0
    assert trained.curve[0]["test_acc"] < 0.2 and seconds < 20


# --- initialisation: the paper's (the authors' code) by default, the earlier one by name ----------

def _global_draws(seed, shapes, draw):
    """Tensors drawn as the authors' code draws them: torch.manual_seed(seed), then `draw(shape)` in order."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [draw(shape) for shape in shapes]


def test_paper_mlp_init_is_the_authors_randn_over_sqrt_fan():
    n, embed, hidden, seed = 24, 32, 64, 3
    # rep-theory-mech-interp utils/models.py OneLayerMLP: W_x, W_y [n, embed] / sqrt(embed),
    # W [2 embed, hidden] / sqrt(2 embed), W_U [hidden, n] / sqrt(hidden), in this order
    fans = {(n, embed): embed, (2 * embed, hidden): 2 * embed, (hidden, n): hidden}
    shapes = [(n, embed), (n, embed), (2 * embed, hidden), (hidden, n)]
    w_x, w_y, w, w_u = _global_draws(seed, shapes, lambda shape: torch.randn(shape) / np.sqrt(fans[shape]))
    model = GroupMLP(n, embed_dim=embed, hidden=hidden, seed=seed)
    assert torch.equal(model.embed_left, w_x) and torch.equal(model.embed_right, w_y)
    assert torch.equal(model.linear.weight, w.T) and torch.equal(model.unembed.weight, w_u.T)
    # the authors' forward in float64: relu([W_x[a], W_y[b]] @ W) @ W_U
    left, right = _pairs(n)
    direct = torch.relu(torch.cat([w_x[left], w_y[right]], 1).double() @ w.double()) @ w_u.double()
    with torch.no_grad():
        assert torch.allclose(model(left, right).double(), direct, atol=1e-5)


def test_init_std_at_the_papers_s5_sizes():
    paper, torch_init = GroupMLP(120, seed=0), GroupMLP(120, seed=0, init="torch")
    assert abs(paper.embed_left.std().item() - 1 / 16) < 1e-3  # 1 / sqrt(256)
    assert abs(torch_init.embed_left.std().item() - 1.0) < 1e-2
    assert abs(paper.linear.weight.std().item() - 1 / np.sqrt(512)) < 1e-3
    transformer = GroupTransformer(120, seed=0)
    assert abs(transformer.unembed.weight.std().item() - 0.8 / np.sqrt(128)) < 1e-3


def test_torch_mlp_init_reproduces_the_earlier_init():
    model = GroupMLP(6, embed_dim=8, hidden=16, seed=5, init="torch")
    g = torch.Generator().manual_seed(5)
    expected = [torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)]
    for shape, fan_in in (((16, 16), 16), ((6, 16), 16)):
        bound = 1 / np.sqrt(fan_in)
        expected.append(torch.rand(shape, generator=g) * 2 * bound - bound)
    got = [model.embed_left, model.embed_right, model.linear.weight, model.unembed.weight]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def _lens_logits(weights, left, right, order):
    """The TransformerLens forward of the authors' Transformer (no LayerNorm, biases 0), float64, at "="."""
    w = {name: t.double() for name, t in weights.items()}
    tokens = torch.stack([left, right, torch.full_like(left, order)], 1)  # [pairs, 3]
    resid = w["W_E"][tokens] + w["W_pos"]  # [pairs, 3, d_model]
    q = torch.einsum("pd,hde->phe", resid[:, -1], w["W_Q"])
    k, v = (torch.einsum("pkd,hde->phke", resid, w[name]) for name in ("W_K", "W_V"))
    pattern = (torch.einsum("phe,phke->phk", q, k) / np.sqrt(q.shape[-1])).softmax(-1)  # [pairs, heads, 3]
    last = resid[:, -1] + torch.einsum("phk,phke,hed->pd", pattern, v, w["W_O"])
    last = last + torch.relu(last @ w["W_in"]) @ w["W_out"]
    return last @ w["W_U"]  # [pairs, order]


def test_paper_transformer_init_is_transformer_lens_normal_and_frozen_zero_biases():
    order, d, heads, d_head, d_mlp, seed = 6, 16, 2, 8, 32, 4
    names = ["W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U"]  # TransformerLens 0.2.0 order
    shapes = [(order + 1, d), (3, d), (heads, d, d_head), (heads, d, d_head), (heads, d, d_head),
              (heads, d_head, d), (d, d_mlp), (d_mlp, d), (d, order)]
    std = 0.8 / np.sqrt(d)  # HookedTransformerConfig.initializer_range
    drawn = _global_draws(seed, shapes, lambda shape: torch.nn.init.normal_(torch.empty(shape), std=std))
    model = GroupTransformer(order, d_model=d, n_heads=heads, d_head=d_head, d_mlp=d_mlp, seed=seed)
    left, right = _pairs(order)
    with torch.no_grad():
        got = model(left, right).double()
    assert torch.allclose(got, _lens_logits(dict(zip(names, drawn)), left, right, order), atol=1e-5)
    assert torch.equal(model.embed.weight, drawn[0]) and torch.equal(model.unembed.weight, drawn[-1].T)
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    assert len(biases) == 2 and all(not p.requires_grad and not p.any() for p in biases)


def test_nanda_transformer_init_reproduces_the_earlier_init():
    model = GroupTransformer(6, d_model=16, n_heads=2, d_head=8, d_mlp=32, seed=1, init="nanda", mlp_biases="trained")
    g = torch.Generator().manual_seed(1)
    for name, parameter in model.named_parameters():
        if name.endswith("bias"):
            assert parameter.requires_grad and not parameter.any()
            continue
        std = 1 / np.sqrt(6 if name.startswith("unembed") else 16)
        assert torch.equal(parameter, torch.randn(parameter.shape, generator=g) * std), name


def test_frozen_biases_stay_zero_in_training_and_trained_ones_move():
    task = composition_task(S3, 0.6, seed=0)
    shape = dict(d_model=8, n_heads=2, d_head=4, d_mlp=16)
    for grokfast in (False, True):
        config = SHORT.model_copy(update={"grokfast": grokfast})
        frozen = train_group_seed(task, GroupTransformerConfig(**shape), config, seed=0).model
        trained = train_group_seed(task, GroupTransformerConfig(**shape, mlp_biases="trained"), config, seed=0).model
        assert not frozen.blocks[0].mlp.fc_in.bias.any() and not frozen.blocks[0].mlp.fc_out.bias.any()
        assert trained.blocks[0].mlp.fc_in.bias.abs().max() > 1e-4
        assert not torch.equal(frozen.blocks[0].mlp.fc_in.weight, trained.blocks[0].mlp.fc_in.weight)


def test_unknown_init_names_the_choices():
    _one_line_error(lambda: GroupMLP(6, init="xavier"), "init must be one of: paper, torch")
    _one_line_error(lambda: GroupTransformer(6, mlp_biases="none"), "mlp_biases must be one of: frozen, trained")
    _one_line_error(lambda: GroupMLPConfig(init="nanda"), "'init'")
