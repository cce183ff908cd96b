"""Circuits on Hugging Face decoders: the per-head sites, the role scores recomputed from `weights()` and
English IOI prompts built with a tokenizer, each checked against the model's own forward pass (float64
references written here) on tiny random GPT-2, GPT-NeoX and Llama models whose q / k weights are scaled up
so attention is far from uniform."""

from __future__ import annotations

import math
import tomllib

import pandas as pd
import pytest
import torch

from _hf_tiny import bpe_tokenizer, build

from universality.api import run_experiment
from universality.circuits import activation_patching, attribution_patching, rank_correlation
from universality.circuits._patching import run_components
from universality.circuits._roles import name_mover_scores, s_inhibition_scores
from universality.config import parse_config
from universality.errors import UniversalityError
from universality.models import HFAdapter
from universality.tasks import IOI_NAMES, IOI_TEMPLATES, TextIOITask, logit_difference

torch.set_num_threads(1)

NAMES = 12  # the first names of IOI_NAMES, whole words of the test tokenizer
QK_GAIN = 12.0  # query / key weights x this: attention logits of order 1, patterns far from uniform
# (the attention's query projection, the block's first norm) per architecture
QUERY = {"gpt2": ("attn.c_attn", "ln_1"), "gpt_neox": ("attention.query_key_value", "input_layernorm"),
         "llama": ("self_attn.q_proj", "input_layernorm")}


def _text(template: str, a: str, b: str, s: str) -> str:
    return template.format(A=a, B=b, S=s)


@pytest.fixture(scope="module")
def tokenizer():
    names = IOI_NAMES[:NAMES]
    return bpe_tokenizer([_text(t, a, b, a) for t in IOI_TEMPLATES for a, b in zip(names, names[1:] + names[:1])] * 3,
                         vocab_size=500)


@pytest.fixture(scope="module")
def adapters(tokenizer, tmp_path_factory):
    """{arch: HFAdapter} of tiny random decoders with sharpened attention (eager, so patterns are returned)."""
    out = {}
    for arch in QUERY:
        model, _ = build(arch, tmp_path_factory.mktemp(arch), tokenizer=tokenizer)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if any(key in name for key in ("c_attn.weight", "query_key_value.weight", "q_proj.weight",
                                               "k_proj.weight")):
                    param.mul_(QK_GAIN)
        model.set_attn_implementation("eager")
        out[arch] = HFAdapter(model, name=arch, tokenizer=tokenizer)
    return out


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return TextIOITask(tokenizer).prompts(16, seed=0)


def _rotary(config, d_head: int, positions: torch.Tensor):
    """Reference rotary (cos, sin) [pos, rotary_dim] from the config alone (RoFormer / HF rotate_half)."""
    rope = config.rope_parameters
    dim = int(d_head * rope.get("partial_rotary_factor", 1.0))
    inv_freq = 1.0 / rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # [dim / 2]
    angles = positions.double()[:, None] * inv_freq  # [pos, dim / 2]
    return torch.cat([angles, angles], dim=-1).cos(), torch.cat([angles, angles], dim=-1).sin()


def _rotate_reference(x, cos, sin):
    r = cos.shape[-1]
    x1, x2, rest = x[..., : r // 2], x[..., r // 2: r], x[..., r:]
    return torch.cat([x1 * cos[:, : r // 2] - x2 * sin[:, r // 2:], x2 * cos[:, r // 2:] + x1 * sin[:, : r // 2], rest],
                     dim=-1)


def _norm_reference(x, weights, prefix, eps):
    if prefix + ".b" in weights:  # LayerNorm
        return (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt() \
            * weights[prefix + ".w"] + weights[prefix + ".b"]
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * weights[prefix + ".w"]  # RMSNorm


@pytest.mark.parametrize("arch", list(QUERY))
def test_patterns_and_hook_z_recomputed_from_weights_match_the_models_forward(adapters, prompts, arch):
    """float64 q, k, v from `weights()` (Conv1D / fused / grouped layouts undone), the config's scale and rotary:
    softmax(q k^T) equals the model's attention pattern, and pattern @ v equals `hook_z` head-major."""
    adapter = adapters[arch]
    weights = {k: v.double() for k, v in adapter.weights().items()}
    layers, heads, d_head = adapter.n_layers, adapter.n_heads, adapter.d_head
    names = [f"blocks.{l}.{site}" for l in range(layers) for site in ("hook_resid_pre", "attn.hook_z")]
    _, acts = run_components(adapter, prompts.clean, names)
    patterns = adapter.attention_patterns(prompts.clean).double()  # [layers, batch, heads, q, k]
    pos = prompts.clean.shape[1]
    causal = torch.ones(pos, pos, dtype=torch.bool).tril()
    rotary = _rotary(adapter.config, d_head, torch.arange(pos)) if arch != "gpt2" else None
    for l in range(layers):
        p = f"blocks.{l}."
        x = _norm_reference(acts[p + "hook_resid_pre"].double(), weights, p + "ln1", adapter.norm_eps)
        q, k, v = (torch.einsum("bpd,hde->bhpe", x, weights[p + f"attn.W_{part}"])
                   + weights.get(p + f"attn.b_{part}", torch.zeros(heads, d_head))[:, None] for part in "QKV")
        if rotary is not None:
            q, k = _rotate_reference(q, *rotary), _rotate_reference(k, *rotary)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(d_head)).masked_fill(~causal, -math.inf)
        pattern = scores.softmax(dim=-1)  # [batch, heads, q, k]
        assert torch.allclose(pattern, patterns[l], atol=2e-5)
        assert pattern.amax(dim=-1)[..., 4:].mean() > 0.3  # sharpened: far from uniform attention
        z = (pattern @ v).transpose(1, 2).reshape(len(prompts), pos, heads * d_head)  # [batch, pos, heads * d_head]
        assert torch.allclose(z, acts[p + "attn.hook_z"].double(), atol=2e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_patching_a_heads_z_equals_adding_its_difference_through_W_O(adapters, prompts, arch):
    """activation_patching of head (l, h) = the metric when (z'_h - z_h) @ W_O[h] is added to the attention
    output instead, minus the clean metric."""
    adapter = adapters[arch]
    metric = lambda logits: logit_difference(logits, prompts)  # noqa: E731
    effects = activation_patching(adapter, prompts.clean, prompts.corrupt, metric, mlps=False)
    w_o = adapter.weights()
    d_head, sites = adapter.d_head, [f"blocks.{l}.attn.hook_z" for l in range(adapter.n_layers)]
    _, clean = run_components(adapter, prompts.clean, sites)
    _, corrupt = run_components(adapter, prompts.corrupt, sites)
    base = float(metric(adapter.logits(prompts.clean)).mean())
    for row in effects.itertuples():
        cut = slice(row.head * d_head, (row.head + 1) * d_head)
        delta = (corrupt[sites[row.layer]] - clean[sites[row.layer]])[..., cut]  # [batch, pos, d_head]
        added = delta @ w_o[f"blocks.{row.layer}.attn.W_O"][row.head]  # [batch, pos, d_model]
        logits = adapter.logits(prompts.clean, edits={f"blocks.{row.layer}.hook_attn_out": lambda v, a=added: v + a})
        assert row.effect == pytest.approx(float(metric(logits).mean()) - base, abs=1e-5)


def test_attribution_patching_ranks_components_as_activation_patching_does(adapters, prompts):
    adapter = adapters["gpt2"]
    metric = lambda logits: logit_difference(logits, prompts)  # noqa: E731
    attribution = attribution_patching(adapter, prompts.clean, prompts.corrupt, metric)
    effect = activation_patching(adapter, prompts.clean, prompts.corrupt, metric)
    assert effect["effect"].abs().max() > 1e-3  # the corruption moves the metric
    assert rank_correlation(attribution, effect) > 0.8
    assert rank_correlation(attribution, effect, component=None) > 0.8


def _query_patched_difference(adapter, arch, prompts, layer, head, added):
    """The model's own forward: receiver (layer, head)'s attention difference IO - S1 at the final position
    [batch] when `added` [batch, d_model] joins the residual of its query only (its first norm and query
    projection rerun on it; keys and values clean)."""
    query_path, norm_path = QUERY[arch]
    block, end = adapter._blocks[layer], prompts.end
    _, acts = run_components(adapter, prompts.clean, [f"blocks.{layer}.hook_resid_pre"])
    projection = block.get_submodule(query_path)
    with torch.no_grad():
        new = projection(block.get_submodule(norm_path)(acts[f"blocks.{layer}.hook_resid_pre"][:, end] + added))
    width = adapter.n_heads * adapter.d_head

    def replace(module, args, output):
        output = output.clone()
        if arch == "gpt2":  # c_attn output [q | k | v]
            output[:, end, :width] = new[:, :width]
        else:  # q_proj output [heads * d_head]
            output[:, end] = new
        return output
    handle = projection.register_forward_hook(replace)
    try:
        with torch.no_grad():
            attentions = adapter.model(input_ids=prompts.clean, output_attentions=True, use_cache=False).attentions
    finally:
        handle.remove()
    final = attentions[layer][:, head, end].double()  # [batch, key]
    rows = torch.arange(len(prompts))
    return final[rows, prompts.io_pos] - final[rows, prompts.s1_pos] - final[rows, prompts.s2_pos]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_s_inhibition_equals_the_models_own_query_path_patch(adapters, prompts, arch):
    """Receivers (1, 0) and (1, last): the score of every layer-0 sender equals (d_clean - d_patched) / |d_clean|
    from the model's forward with the sender's output difference (through the model's own output projection) in the query only."""
    adapter = adapters[arch]
    end, d_head, heads = prompts.end, adapter.d_head, adapter.n_heads
    site = "blocks.0.attn.hook_z"
    _, clean = run_components(adapter, prompts.clean, [site])
    _, corrupt = run_components(adapter, prompts.corrupt, [site])
    out_proj = adapter._blocks[0].get_submodule(adapter.arch.attn_out)
    for receiver in (0, heads - 1):
        scores = s_inhibition_scores(adapter, prompts, [(1, receiver)]).query("layer == 0")
        base = float(_query_patched_difference(adapter, arch, prompts, 1, receiver, 0.0).mean())
        for sender in range(heads):
            delta = torch.zeros(len(prompts), heads * d_head)
            cut = slice(sender * d_head, (sender + 1) * d_head)
            delta[:, cut] = (corrupt[site] - clean[site])[:, end, cut]
            with torch.no_grad():
                added = out_proj(delta) - out_proj(torch.zeros_like(delta))  # [batch, d_model], no bias
            patched = float(_query_patched_difference(adapter, arch, prompts, 1, receiver, added).mean())
            expected = (base - patched) / abs(base)
            assert scores["s_inhibition"].iloc[sender] == pytest.approx(expected, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_copy_scores_read_each_heads_ov_output_through_the_models_unembedding(adapters, prompts, arch):
    """copy / negative_copy: a head's value at IO's position (the model's value projection, grouped heads shared),
    through the model's output projection, final-norm scale (centred for a LayerNorm) and LM head, ranks IO
    first / last among the prompts' names."""
    adapter = adapters[arch]
    scores = name_mover_scores(adapter, prompts)
    names = torch.cat([prompts.io, prompts.s]).unique()
    rows, heads, d_head = torch.arange(len(prompts)), adapter.n_heads, adapter.d_head
    final_norm = adapter.base.get_submodule(adapter.arch.final_norm)
    for l, block in enumerate(adapter._blocks):
        _, acts = run_components(adapter, prompts.clean, [f"blocks.{l}.hook_resid_pre"])
        with torch.no_grad():
            x = block.get_submodule(QUERY[arch][1])(acts[f"blocks.{l}.hook_resid_pre"][rows, prompts.io_pos])
            if arch == "gpt2":
                v = block.attn.c_attn(x)[:, 2 * heads * d_head:].view(-1, heads, d_head)
            else:  # grouped query attention: head h reads kv head h // (heads / kv_heads)
                v = block.self_attn.v_proj(x).view(len(prompts), -1, d_head)
                v = v.repeat_interleave(heads // v.shape[1], dim=1)
            out_proj = block.get_submodule(adapter.arch.attn_out)
            for h in range(heads):
                z = torch.zeros(len(prompts), heads * d_head)
                z[:, h * d_head:(h + 1) * d_head] = v[:, h]
                out = (out_proj(z) - out_proj(torch.zeros_like(z))).double()  # [batch, d_model]
                out = out - out.mean(-1, keepdim=True) if arch == "gpt2" else out
                logits = (final_norm.weight.double() * out) @ adapter.model.lm_head.weight.double()[names].T
                io = logits[rows, torch.searchsorted(names, prompts.io)]
                others = logits.clone()
                others[rows, torch.searchsorted(names, prompts.io)] = math.nan
                row = scores[(scores["layer"] == l) & (scores["head"] == h)].iloc[0]
                assert row["copy"] == pytest.approx(float((io > others.nan_to_num(-math.inf).amax(-1)).double().mean()))
                assert row["negative_copy"] == pytest.approx(
                    float((io < others.nan_to_num(math.inf).amin(-1)).double().mean()))


def test_text_prompts_hold_single_token_names_where_the_template_says(tokenizer):
    task = TextIOITask(tokenizer)
    prompts = task.prompts(64, seed=1)
    rows = torch.arange(len(prompts))
    assert task.name_texts_[:NAMES] == list(IOI_NAMES[:NAMES])
    for name, token in zip(task.name_texts_, task.names_.tolist()):
        assert tokenizer(f"and {name}", add_special_tokens=False)["input_ids"][-1] == token
        assert tokenizer.decode([token]) == f" {name}"
    assert bool((prompts.clean[:, 0] == tokenizer.eos_token_id).all())  # GPT-2 style: <|endoftext|> first
    assert bool((prompts.clean[rows, prompts.io_pos] == prompts.io).all())
    assert bool((prompts.clean[rows, prompts.s1_pos] == prompts.s).all())
    assert bool((prompts.clean[rows, prompts.s2_pos] == prompts.s).all())  # S2 == S
    assert bool((prompts.corrupt[rows, prompts.s2_pos] == prompts.io).all())  # the corruption puts IO in S2
    changed = (prompts.corrupt != prompts.clean).sum(dim=1)
    assert changed.tolist() == [1] * len(prompts) and bool((prompts.io != prompts.s).all())
    assert 0.2 < float((prompts.io_pos < prompts.s1_pos).double().mean()) < 0.8  # ABBA and BABA
    for i in range(len(prompts)):
        template = task.templates_[int(prompts.template[i])]
        io, s = (tokenizer.decode([int(t)]).strip() for t in (prompts.io[i], prompts.s[i]))
        a, b = (io, s) if prompts.io_pos[i] < prompts.s1_pos[i] else (s, io)
        assert tokenizer.decode(prompts.clean[i, 1:]) == _text(template, a, b, s)
        assert prompts.s2_pos[i] == prompts.end - 4  # "..., S gave a drink to": S2 four tokens before the end


def _one_line_error(call, *needles):
    with pytest.raises(UniversalityError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_bad_tokenizers_and_templates_are_one_line_errors(tokenizer):
    _one_line_error(lambda: TextIOITask(bpe_tokenizer()), "single-token names", "at least 2")
    _one_line_error(lambda: TextIOITask(tokenizer, templates=["When {A} and {B} went to the store, gave a drink to"]),
                    "{S}")
    glued = "When x{A} and {B} went to the store, {S} gave a drink to"  # " xMary": no name token
    _one_line_error(lambda: TextIOITask(tokenizer, templates=[glued]), "IOI template", "merges")


def test_a_pretrained_run_with_circuits_writes_the_tables_and_the_report_grid(tokenizer, tmp_path):
    """`circuits = true`: English IOI prompts for two tiny GPT-2 models sharing a tokenizer, the three circuit
    tables with each model named, the report's circuit grid; an encoder is refused before the run."""
    for seed in (0, 1):
        build("gpt2", tmp_path / f"m{seed}", seed=seed, tokenizer=tokenizer)
    (tmp_path / "text.txt").write_text("\n".join(_text(t, "Mary", "John", "John") for t in IOI_TEMPLATES) * 10)
    text = (f'kind = "pretrained"\nname = "ioi"\nmodels = ["{tmp_path / "m0"}", "{tmp_path / "m1"}"]\n'
            f'neurons = false\ncircuits = true\nthreads = 1\n[data]\nsource = "{tmp_path / "text.txt"}"\nseq_len = 16\n'
            'rows = 8\n[collect]\nbatch_rows = 8\n[calibration]\nenabled = false\n[similarity]\nenabled = false\n'
            '[posterior]\nenabled = false\n')
    run = run_experiment(parse_config(tomllib.loads(text)), runs_dir=tmp_path / "runs")
    tables = {name: pd.read_parquet(run.run_dir / "tables" / f"{name}.parquet")
              for name in ("ioi", "circuits", "circuit_attribution")}
    assert tables["ioi"][["seed", "model"]].values.tolist() == [[0, "m0"], [1, "m1"]]
    heads = tables["circuit_attribution"].query("component == 'head'")
    assert len(heads) == 2 * 2 * 4 and set(heads.model) == {"m0", "m1"}  # models x layers x heads
    html = (run.run_dir / "report.html").read_text()
    assert "English indirect-object prompts" in html and (run.run_dir / "plots" / "circuits.png").is_file()
    build("bert", tmp_path / "bert", tokenizer=tokenizer)  # an encoder: no final-position logit difference
    encoder = text.replace(str(tmp_path / "m1"), str(tmp_path / "bert")).replace('name = "ioi"', 'name = "enc"')
    _one_line_error(lambda: run_experiment(parse_config(tomllib.loads(encoder)), runs_dir=tmp_path / "runs"),
                    "encoder")
    assert not (tmp_path / "runs" / "enc").exists()
