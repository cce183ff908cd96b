"""Invariants of the tiny transformer: hook names and shapes, causality, unit-set sizes."""

import pytest
import torch

from universality.config import ModelConfig
from universality.errors import UniversalityError
from universality.models import HookPoint, TinyTransformer

torch.set_num_threads(1)

CONFIG = ModelConfig(d_model=16, n_layers=2, n_heads=4, d_mlp=24, activation="relu")
VOCAB, N_CTX, BATCH, POS = 11, 12, 3, 10


@pytest.fixture(scope="module")
def model():
    return TinyTransformer(CONFIG, vocab_size=VOCAB, n_ctx=N_CTX, seed=0).eval()


def _tokens(seed=0):
    return torch.randint(VOCAB, (BATCH, POS), generator=torch.Generator().manual_seed(seed))


def _run_with_cache(model, tokens):
    cache = {}
    handles = [module.register_forward_hook(lambda m, i, out, name=name: cache.__setitem__(name, out))
               for name, module in model.hook_points().items()]
    try:
        logits = model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return logits, cache


def test_hook_names_are_transformer_lens_names_in_model_order(model):
    expected = ["hook_embed", "hook_pos_embed"]
    for layer in range(CONFIG.n_layers):
        expected += [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_pattern",
                     f"blocks.{layer}.mlp.hook_pre", f"blocks.{layer}.mlp.hook_post",
                     f"blocks.{layer}.hook_resid_post"]
    assert list(model.hook_points()) == expected
    assert all(isinstance(module, HookPoint) for module in model.hook_points().values())


def test_hook_shapes_and_unit_set_sizes(model):
    logits, cache = _run_with_cache(model, _tokens())
    assert logits.shape == (BATCH, POS, VOCAB)
    units = model.unit_sets()
    assert list(units) == [name for name in model.hook_points() if not name.endswith("hook_pattern")]
    for name, size in units.items():
        assert cache[name].shape == (BATCH, POS, size), name
        assert size == (CONFIG.d_mlp if ".mlp." in name else CONFIG.d_model)
    for layer in range(CONFIG.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert pattern.shape == (BATCH, CONFIG.n_heads, POS, POS)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(BATCH, CONFIG.n_heads, POS))
        assert (pattern.triu(diagonal=1) == 0).all()  # no query attends to a later key
        post, pre = cache[f"blocks.{layer}.mlp.hook_post"], cache[f"blocks.{layer}.mlp.hook_pre"]
        torch.testing.assert_close(post, pre.relu())
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])


def test_changing_a_later_token_leaves_earlier_logits_unchanged(model):
    tokens = _tokens()
    changed = tokens.clone()
    changed[:, 6] = (changed[:, 6] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, :6], after[:, :6], rtol=0, atol=0)
    assert not torch.allclose(before[:, 6:], after[:, 6:])


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = TinyTransformer(CONFIG, vocab_size=VOCAB, n_ctx=N_CTX, seed=5)
    assert torch.equal(torch.rand(3), expected_next)
    b = TinyTransformer(CONFIG, vocab_size=VOCAB, n_ctx=N_CTX, seed=5)
    c = TinyTransformer(CONFIG, vocab_size=VOCAB, n_ctx=N_CTX, seed=6)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert not torch.equal(a.embed.weight, c.embed.weight)


def test_gelu_activation_is_used_when_configured():
    gelu = TinyTransformer(CONFIG.model_copy(update={"activation": "gelu"}), vocab_size=VOCAB, n_ctx=N_CTX)
    _, cache = _run_with_cache(gelu, _tokens())
    pre = cache["blocks.0.mlp.hook_pre"]
    torch.testing.assert_close(cache["blocks.0.mlp.hook_post"], torch.nn.functional.gelu(pre))


def test_too_long_input_raises_one_line(model):
    with pytest.raises(UniversalityError, match="n_ctx=12"):
        model(torch.zeros(1, N_CTX + 1, dtype=torch.long))
