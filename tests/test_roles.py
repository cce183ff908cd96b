"""Neuron roles (prediction, suppression, entropy, attention deactivation), interventions and attention-head
matching, on tiny GPT-2 and TinyTransformer models with planted neurons; each test named for its invariant."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import transformers
from _hf_tiny import ARCHS
from scipy.linalg import null_space

from universality import UniversalityError
from universality.neurons._heads import head_correlations, head_scores, match_heads, pattern_scores
from universality.neurons._interventions import intervene, mean_ablate, scale_units, set_units, zero_units
from universality.neurons._roles import (
    attention_deactivation_scores, bos_attention_patching, entropy_intervention, entropy_neuron_scores,
    prediction_neurons,
)
from universality.config import ModelConfig
from universality.models import TinyTransformer, adapt, fold_layernorm

POST1 = "blocks.1.mlp.hook_post"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _gpt2(vocab: int, seed: int = 0):
    """A tiny GPT-2 (2 layers, d_model 32, 4 heads, d_mlp 128) with non-trivial LayerNorm weights."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(ARCHS["gpt2"][0](vocab)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln_" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model


def _tokens(vocab: int, rows: int = 4, pos: int = 16, seed: int = 0, bos: int = 0):
    tokens = torch.randint(1, vocab, (rows, pos), generator=torch.Generator().manual_seed(seed))
    tokens[:, 0] = bos
    return tokens


def _tiny(seed: int = 0, qk_gain: float = 1.0):
    """A 2-layer TinyTransformer with random LayerNorm weights and qkv biases (so folding and biases matter);
    `qk_gain` sharpens the attention patterns."""
    model = TinyTransformer(ModelConfig(d_model=16, n_layers=2, n_heads=4, d_mlp=32), vocab_size=20, n_ctx=16,
                            seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.blocks:
            block.ln1.weight.add_(0.3 * torch.randn(16, generator=g))
            block.ln1.bias.add_(0.3 * torch.randn(16, generator=g))
            block.attn.qkv.weight[:32].mul_(qk_gain)
            block.attn.qkv.bias.add_(0.5 * torch.randn(48, generator=g))
    return model


# -- interventions ----------------------------------------------------------------------------------

def test_editing_nothing_changes_nothing():
    adapter = adapt(_gpt2(40))
    tokens = _tokens(40)
    for edit in (zero_units([]), scale_units([3, 7, 100], 1.0), scale_units(None, 1.0)):
        out = intervene(adapter, tokens, {POST1: edit})
        assert out["kl"] == 0.0
        assert out["loss"] == out["loss_clean"] and out["entropy"] == out["entropy_clean"]
        assert out["ln_scale"] == out["ln_scale_clean"]


def test_zeroing_every_neuron_equals_zeroed_w_out():
    model = _gpt2(40)
    tokens = _tokens(40)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.transformer.h[0].mlp.c_proj.weight.zero_()  # Conv1D [d_mlp, d_model]: W_out
    edited = intervene(adapt(model), tokens, {"blocks.0.mlp.hook_post": zero_units(None)})
    reference = intervene(adapt(zeroed), tokens, {})
    assert edited["kl"] > 0
    assert math.isclose(edited["loss"], reference["loss_clean"], rel_tol=1e-5)
    assert math.isclose(edited["entropy"], reference["entropy_clean"], rel_tol=1e-5)
    assert math.isclose(edited["ln_scale"], reference["ln_scale_clean"], rel_tol=1e-5)


def test_unit_edits_set_scale_and_mean_ablate_only_listed_units():
    x = torch.arange(12.0).view(1, 2, 6)
    assert torch.equal(set_units([1, 4], [7.0, 8.0])(x)[..., [1, 4]], torch.tensor([[[7.0, 8.0], [7.0, 8.0]]]))
    assert torch.equal(scale_units([2], 2.0)(x)[..., 2], 2 * x[..., 2])
    ablated = mean_ablate([0, 5], x.mean(dim=(0, 1))[[0, 5]])(x)
    assert torch.equal(ablated[..., 1:5], x[..., 1:5]) and torch.allclose(ablated[0, :, 0], torch.tensor([3.0, 3.0]))
    with pytest.raises(UniversalityError, match="one per unit"):
        set_units([1, 2], [1.0, 2.0, 3.0])
    with pytest.raises(UniversalityError, match="edit indices"):
        intervene(adapt(_gpt2(40)), _tokens(40), {POST1: zero_units([128])})


# -- prediction and suppression neurons --------------------------------------------------------------

def test_planted_prediction_neuron_is_found_and_its_negation_is_suppression():
    model = _gpt2(48)
    unembed = fold_layernorm(adapt(model).weights())["W_U"]  # [d_model, vocab]
    target = torch.zeros(48)
    target[7] = 1.0
    # least-squares direction whose logits W_U^T u best match raising token 7 alone
    u = torch.linalg.lstsq(unembed.T.double(), target.double()[:, None]).solution[:, 0].float()
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.weight[5] = 3 * u / u.norm()
        model.transformer.h[1].mlp.c_proj.weight[6] = -3 * u / u.norm()
    table = prediction_neurons(fold_layernorm(adapt(model).weights()))
    assert len(table) == 2 * 128 and list(table.columns) == ["unit_set", "unit", "vocab_kurtosis", "vocab_skew", "role"]
    roles = table.set_index(["unit_set", "unit"]).role
    assert roles[(POST1, 5)] == "prediction" and roles[(POST1, 6)] == "suppression"
    assert roles.drop([(POST1, 5), (POST1, 6)]).isna().all()


# -- entropy neurons --------------------------------------------------------------------------------

def _entropy_model():
    """GPT-2 with vocab 16 < d_model 32, so W_U has a null space; neuron 3 of layer 1 writes only into it."""
    model = _gpt2(16)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(30.0)  # confident predictions, so entropy has room to rise
    unembed = fold_layernorm(adapt(model).weights())["W_U"]  # [32, 16]
    null = torch.as_tensor(null_space(unembed.T.double().numpy()), dtype=torch.float32)  # [32, >= 16]
    direction = null @ torch.randn(null.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.weight[3] = 4 * direction / direction.norm()
    return model


def test_null_space_neuron_has_null_share_one_and_ranks_first():
    table = entropy_neuron_scores(fold_layernorm(adapt(_entropy_model()).weights()))
    assert table.null_dims.iloc[0] >= 16
    top = table.sort_values(["null_share", "w_out_norm"], ascending=False).iloc[0]
    assert (top.unit_set, top.unit) == (POST1, 3) and top.null_share > 0.999
    assert table.null_share.drop(top.name).max() < 0.9


@pytest.mark.parametrize("vocab", [5, 12, 400])  # below, at and above d_model 12
def test_null_share_matches_the_eigenvectors_of_w_u_w_u_t_for_every_vocabulary_size(vocab):
    # the SVD leaves out the [vocab, vocab] right singular vectors (GPT-2: 20 GB); U must still be complete
    g = torch.Generator().manual_seed(vocab)
    d_model = 12
    w_u = torch.randn(d_model, vocab, generator=g, dtype=torch.float64)
    w_u[:4] *= 1e-3  # 4 directions of the residual stream W_U barely reads
    w_out = torch.randn(7, d_model, generator=g, dtype=torch.float64)
    table = entropy_neuron_scores({"W_U": w_u, "blocks.0.mlp.W_out": w_out})
    values, vectors = torch.linalg.eigh(w_u @ w_u.T)  # ascending; W_U W_U^T = U S^2 U^T
    singular = values.clamp_min(0).sqrt()
    null = vectors[:, singular <= 0.1 * singular.max()]
    expected = ((w_out @ null) ** 2).sum(dim=1) / (w_out**2).sum(dim=1)
    assert table.null_dims.iloc[0] == null.shape[1] >= 4
    np.testing.assert_allclose(table.null_share.to_numpy(), expected.numpy(), atol=1e-9)


def test_fixing_the_entropy_neuron_raises_entropy_and_ln_scale_more_than_random_neurons():
    adapter = adapt(_entropy_model())
    table = entropy_intervention(adapter, _tokens(16), POST1, 3, [0.0, 10.0], random_baseline=4, seed=0)
    assert list(table.columns) == ["unit_set", "unit", "baseline", "value", "entropy", "loss", "ln_scale", "kl",
                                   "entropy_clean", "loss_clean", "ln_scale_clean"]
    assert len(table) == 10 and table.baseline.sum() == 8 and np.isfinite(table.select_dtypes("number")).all().all()
    high = table[table.value == 10.0].set_index("unit")
    planted, random = high.loc[3], high[high.baseline]
    assert planted.entropy > planted.entropy_clean + 0.1 and planted.ln_scale > 2 * planted.ln_scale_clean
    assert planted.entropy - planted.entropy_clean > (random.entropy - random.entropy_clean).abs().max()
    assert planted.ln_scale > random.ln_scale.max()


# -- attention deactivation -------------------------------------------------------------------------

def test_attention_deactivation_score_matches_a_direct_computation():
    model = _tiny()
    adapter = adapt(model, bos_token_id=0)
    tokens = _tokens(20, pos=10)
    table = attention_deactivation_scores(adapter, tokens, ln_eps=model.blocks[1].ln1.eps)
    assert len(table) == 32 * 4 and set(table.head_layer) == {1}
    # direct: the key at position 0 from the qkv projection's output, W_Q and ln1 from the modules
    store = {}
    block = model.blocks[1]
    handle = block.attn.qkv.register_forward_hook(lambda m, a, out: store.setdefault("qkv", out.detach()))
    try:
        model(tokens)
    finally:
        handle.remove()
    k_bos = store["qkv"][:, 0, 16:32].mean(dim=0).view(4, 4)  # [heads, d_head]
    w_q = block.attn.qkv.weight[:16].detach().view(4, 4, 16)  # [heads, d_head, d_model]
    w_out = model.blocks[0].mlp.fc_out.weight.detach().T  # [d_mlp, d_model]
    seen = (w_out - w_out.mean(dim=1, keepdim=True)) * block.ln1.weight.detach()  # centred, scaled by ln1
    direct = torch.einsum("nd,hed,he->nh", seen, w_q, k_bos) / 2.0  # sqrt(d_head) = 2
    got = torch.tensor(table.sort_values(["unit", "head"]).score.values).view(32, 4)
    assert torch.allclose(got.float(), direct, atol=1e-5, rtol=1e-4)
    b_q = block.attn.qkv.bias.detach()[:16].view(4, 4) + torch.einsum("d,hed->he", block.ln1.bias.detach(), w_q)
    assert np.allclose(table.b_Q_term.values[:4], ((b_q * k_bos).sum(dim=1) / 2.0).numpy(), atol=1e-5)


def _quiet_llama():
    """A tiny Llama (RMSNorm, eps 1e-6) whose residual stream after block 0 is so small (~1e-5) that the
    norm's epsilon sets its scale: a wrong epsilon gives a visibly wrong BOS key."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(ARCHS["llama"][0](40)).eval()
    with torch.no_grad():
        for weight in (model.model.embed_tokens.weight, model.model.layers[0].self_attn.o_proj.weight,
                       model.model.layers[0].mlp.down_proj.weight):
            weight.mul_(1e-3)
    return model


def test_bos_key_uses_the_models_norm_epsilon():
    from universality.neurons._roles import _bos_keys
    model = _quiet_llama()
    eps = model.config.rms_norm_eps
    adapter, tokens = adapt(model), _tokens(40, pos=8)
    store = {}
    projection = model.model.layers[1].self_attn.k_proj
    handle = projection.register_forward_hook(lambda m, a, out: store.setdefault("k", out.detach()))
    try:
        model(tokens)
    finally:
        handle.remove()
    # the model's own key at position 0 (unrotated), K/V heads repeated to the 4 query heads as HF repeat_kv
    direct = store["k"][:, 0].mean(dim=0).view(2, 8).repeat_interleave(2, dim=0).double()  # [heads, d_head]
    raw = adapter.weights()
    resid = adapter.run(tokens, ["blocks.0.hook_resid_post"])["blocks.0.hook_resid_post"][:, 0]
    assert resid.pow(2).mean().item() < eps  # the epsilon dominates the norm here
    right = _bos_keys(adapter, raw, tokens, eps)[1]
    wrong = _bos_keys(adapter, raw, tokens, 1e-5)[1]
    assert torch.allclose(right, direct, rtol=1e-4, atol=1e-7 * direct.abs().max().item())
    assert (wrong - direct).abs().max() > 0.3 * direct.abs().max()
    scores = {e: attention_deactivation_scores(adapter, tokens, ln_eps=e).score.to_numpy() for e in (eps, 1e-5)}
    assert not np.allclose(scores[eps], scores[1e-5], rtol=0.1)
    # the adapter reports the model's own epsilon, so by default the right one is used
    assert adapter.norm_eps == eps == 1e-6
    np.testing.assert_array_equal(attention_deactivation_scores(adapter, tokens).score.to_numpy(), scores[eps])


def test_missing_norm_epsilon_is_one_line_naming_ln_eps():
    import types

    from universality.neurons._roles import _norm_eps
    adapter = types.SimpleNamespace(name="m")
    with pytest.raises(UniversalityError, match="pass ln_eps=") as info:
        _norm_eps(adapter, None)
    assert "\n" not in str(info.value)
    assert _norm_eps(types.SimpleNamespace(name="m", norm_eps=1e-6), None) == 1e-6
    assert _norm_eps(adapter, 1e-5) == 1e-5
    with pytest.raises(UniversalityError, match="ln_eps must be a finite number"):
        _norm_eps(adapter, float("nan"))


def test_bos_patching_of_a_neuron_without_output_changes_no_attention():
    model = _tiny()
    with torch.no_grad():
        model.blocks[0].mlp.fc_out.weight[:, 2] = 0.0
    adapter = adapt(model, bos_token_id=0)
    tokens = _tokens(20, pos=10)
    silent = bos_attention_patching(adapter, tokens, "blocks.0.mlp.hook_post", 2, value=50.0)
    loud = bos_attention_patching(adapter, tokens, "blocks.0.mlp.hook_post", 3, value=50.0)
    assert list(silent.columns) == ["head_layer", "head", "bos_clean", "bos_patched", "delta"] and len(silent) == 4
    assert np.allclose(silent.delta, 0.0, atol=1e-6) and loud.delta.abs().max() > 1e-3
    with pytest.raises(UniversalityError, match="not an MLP neuron set"):
        bos_attention_patching(adapter, tokens, "blocks.0.hook_resid_post", 2, value=1.0)


# -- attention heads --------------------------------------------------------------------------------

def _permute_heads(model: TinyTransformer, layer: int, perm: torch.Tensor) -> TinyTransformer:
    """A copy whose head j of `layer` is head perm[j] of `model` (Q, K, V rows and W_O columns moved together)."""
    out = copy.deepcopy(model)
    attn, d, heads = out.blocks[layer].attn, 16, 4
    d_head = d // heads
    order = (perm[:, None] * d_head + torch.arange(d_head)).reshape(-1)  # [d]: new feature -> old feature
    with torch.no_grad():
        rows = torch.cat([part * d + order for part in range(3)])  # q, k, v blocks
        attn.qkv.weight.copy_(attn.qkv.weight[rows])
        attn.qkv.bias.copy_(attn.qkv.bias[rows])
        attn.out.weight.copy_(attn.out.weight[:, order])
    return out


def test_permuted_heads_match_their_twins_with_correlation_one():
    model = _tiny(seed=3, qk_gain=30.0)
    perm = torch.tensor([2, 0, 3, 1])
    twin = _permute_heads(model, 1, perm)
    tokens = _tokens(20, pos=12)
    a, b = adapt(model).attention_patterns(tokens), adapt(twin).attention_patterns(tokens)
    assert torch.allclose(adapt(model).logits(tokens), adapt(twin).logits(tokens), atol=1e-5)  # function-preserving
    table = match_heads(a, b)
    expected = torch.cat([torch.arange(4), 4 + torch.argsort(perm)]).numpy()  # a's head i is b's head argsort(perm)[i]
    assert np.array_equal(table.best_layer * 4 + table.best_head, expected)
    assert np.array_equal(table.matched_layer * 4 + table.matched_head, expected)
    assert np.allclose(table.best_corr, 1.0, atol=1e-6) and np.allclose(table.matched_corr, 1.0, atol=1e-6)
    off = head_correlations(a, b)[np.arange(8)[None, :] != expected[:, None]]
    assert off.max() < 0.999


def test_previous_token_pattern_scores_one_and_bos_pattern_scores_sink():
    pos = 8
    prev = torch.zeros(pos, pos)
    prev[0, 0] = 1.0
    prev[torch.arange(1, pos), torch.arange(pos - 1)] = 1.0
    sink = torch.zeros(pos, pos)
    sink[:, 0] = 1.0
    patterns = torch.stack([prev, sink])[None, None].expand(1, 3, 2, pos, pos)  # [layers, batch, heads, q, k]
    table = pattern_scores(patterns)
    assert table.prev_token.tolist() == [1.0, 0.0] and table.bos_sink.tolist() == [1 / (pos - 1), 1.0]
    assert table.positional.iloc[0] == 1.0 and table.positional_offset.iloc[0] == 1


def test_head_scores_have_every_column_in_unit_range():
    adapter = adapt(_tiny(qk_gain=10.0), bos_token_id=0)
    table = head_scores(adapter, _tokens(20, pos=13), seed=0)
    assert list(table.columns) == ["layer", "head", "prev_token", "bos_sink", "positional", "positional_offset",
                                   "induction"]
    values = table[["prev_token", "bos_sink", "positional", "induction"]].values
    assert len(table) == 8 and np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()


class _PlantedHeads:
    """An adapter stand-in whose one layer has planted heads, each pattern a rule on the tokens [batch, pos]:
    0 induction (the token after the latest earlier copy of the current token, else BOS), 1 previous token,
    2 duplicate token (the latest earlier copy itself, else BOS)."""

    bos_token_id, pad_token_id, vocab_size, n_ctx = 0, None, 5000, 64

    def attention_patterns(self, tokens):
        batch, pos = tokens.shape
        patterns = torch.zeros(1, batch, 3, pos, pos)
        for row in range(batch):
            for q in range(pos):
                earlier = [k for k in range(1, q) if tokens[row, k] == tokens[row, q]]
                patterns[0, row, 0, q, earlier[-1] + 1 if earlier else 0] = 1.0
                patterns[0, row, 1, q, max(q - 1, 0)] = 1.0
                patterns[0, row, 2, q, earlier[-1] if earlier else 0] = 1.0
        return patterns


def test_planted_induction_head_scores_one_and_previous_token_head_zero():
    from universality.neurons._heads import induction_tokens
    adapter = _PlantedHeads()
    tokens = _tokens(5000, rows=3, pos=17)
    assert all(len(set(row[1:].tolist())) == 16 for row in tokens)  # no repeat in the plain rows
    table = head_scores(adapter, tokens, seed=0).set_index("head")
    # induction head: exactly 1 on [BOS, r, r] (r drawn without repeats here, checked below), 0 as a
    # previous-token head on the plain rows (it rests on BOS there)
    repeated = induction_tokens(3, 8, 5000, bos_token_id=0, seed=0)
    assert all(len(set(row[1:9].tolist())) == 8 for row in repeated)
    assert table.induction[0] == pytest.approx(1.0) and table.prev_token[0] == 0.0
    # previous-token head: prev_token 1, induction 0; duplicate-token head (one position early): induction 0
    assert table.prev_token[1] == pytest.approx(1.0) and table.induction[1] == 0.0
    assert table.induction[2] == 0.0 and table.bos_sink[2] == pytest.approx(1.0)
