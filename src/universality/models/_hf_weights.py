"""Analysis weights of Hugging Face models under TransformerLens names, raw (not folded).

Every tensor is read by its parameter name and checked against the shape the config implies;
a missing name or a wrong shape is a one-line error. Results are float32 CPU copies.

| name                                  | shape                        | notes                              |
|---------------------------------------|------------------------------|------------------------------------|
| W_E                                   | [vocab, d_model]             |                                    |
| W_pos                                 | [n_ctx, d_model]             | learned positions only (GPT-2, BERT) |
| W_U, b_U                              | [d_model, vocab], [vocab]    | with a head; b_U when it has a bias |
| blocks.{l}.attn.W_Q, W_K, W_V         | [n_heads, d_model, d_head]   | grouped K/V heads repeated to n_heads |
| blocks.{l}.attn.b_Q, b_K, b_V         | [n_heads, d_head]            | when present                       |
| blocks.{l}.attn.W_O, b_O              | [n_heads, d_head, d_model], [d_model] | b_O when present          |
| blocks.{l}.mlp.W_in, b_in             | [d_model, d_mlp], [d_mlp]    | gated MLPs: W_in is up_proj        |
| blocks.{l}.mlp.W_gate                 | [d_model, d_mlp]             | gated MLPs (Llama-style) only      |
| blocks.{l}.mlp.W_out, b_out           | [d_mlp, d_model], [d_model]  | absent MLP biases are zeros        |
| blocks.{l}.ln1.w/.b, ln2.w/.b         | [d_model]                    | .b absent for RMSNorm              |
| ln_final.w/.b                         | [d_model]                    | decoders                           |
| BERT: W_token_type, ln_embed.w/.b     | [types, d_model], [d_model]  | post-LN: ln1 after attention, ln2 after the MLP |
| BERT MLM head: mlm_head.W, .b, .ln.w, .ln.b | [d_model, d_model], [d_model] | the head's transform before W_U |

Conventions: activations are row vectors, `x @ W`; Conv1D (GPT-2) weights are already [in, out],
nn.Linear weights [out, in] are transposed.
"""

from __future__ import annotations

import torch

from ..errors import UniversalityError

__all__ = ["hf_weights"]


class _Reader:
    """Named parameters of a module, read with a shape check."""

    def __init__(self, module, model_name: str):
        self.params = dict(module.named_parameters(remove_duplicate=False))
        self.model_name = model_name

    def has(self, key: str) -> bool:
        return key in self.params

    def __call__(self, key: str, *shape: int) -> torch.Tensor:
        if key not in self.params:
            raise UniversalityError(f"{self.model_name}: weight {key!r} is missing; the checkpoint does not "
                                    "match the architecture its config names")
        tensor = self.params[key]
        if tuple(tensor.shape) != shape:
            raise UniversalityError(f"{self.model_name}: weight {key!r} has shape {list(tensor.shape)}, the config "
                                    f"implies {list(shape)}; config.json and the weights disagree")
        return tensor.detach().float().cpu().clone()


def _heads_in(w: torch.Tensor, heads: int, d_head: int) -> torch.Tensor:
    """nn.Linear weight [heads * d_head, d_model] -> [heads, d_model, d_head]."""
    return w.view(heads, d_head, -1).transpose(1, 2).contiguous()


def _heads_out(w: torch.Tensor, heads: int, d_head: int) -> torch.Tensor:
    """nn.Linear weight [d_model, heads * d_head] -> W_O [heads, d_head, d_model]."""
    return w.T.reshape(heads, d_head, -1).contiguous()


def _ln(out, r, name, key, d, bias=True):
    out[f"{name}.w"] = r(f"{key}.weight", d)
    if bias:
        out[f"{name}.b"] = r(f"{key}.bias", d)


def _gpt2(a, r, out):
    d, h, dh, m = a.d_model, a.n_heads, a.d_head, a.d_mlp
    out["W_E"], out["W_pos"] = r("wte.weight", a.vocab_size, d), r("wpe.weight", a.n_ctx, d)
    for l in range(a.n_layers):
        p, k = f"blocks.{l}.", f"h.{l}."
        w_qkv, b_qkv = r(k + "attn.c_attn.weight", d, 3 * h * dh), r(k + "attn.c_attn.bias", 3 * h * dh)
        for part, w, b in zip("QKV", w_qkv.split(h * dh, dim=1), b_qkv.split(h * dh)):
            out[p + f"attn.W_{part}"] = w.reshape(d, h, dh).permute(1, 0, 2).contiguous()  # [h, d, dh]
            out[p + f"attn.b_{part}"] = b.view(h, dh)
        out[p + "attn.W_O"] = r(k + "attn.c_proj.weight", h * dh, d).view(h, dh, d)
        out[p + "attn.b_O"] = r(k + "attn.c_proj.bias", d)
        out[p + "mlp.W_in"], out[p + "mlp.b_in"] = r(k + "mlp.c_fc.weight", d, m), r(k + "mlp.c_fc.bias", m)
        out[p + "mlp.W_out"], out[p + "mlp.b_out"] = r(k + "mlp.c_proj.weight", m, d), r(k + "mlp.c_proj.bias", d)
        _ln(out, r, p + "ln1", k + "ln_1", d)
        _ln(out, r, p + "ln2", k + "ln_2", d)
    _ln(out, r, "ln_final", "ln_f", d)


def _gpt_neox(a, r, out):
    d, h, dh, m = a.d_model, a.n_heads, a.d_head, a.d_mlp
    out["W_E"] = r("embed_in.weight", a.vocab_size, d)  # rotary positions: no W_pos
    for l in range(a.n_layers):
        p, k = f"blocks.{l}.", f"layers.{l}."
        # query_key_value output is [heads, (q | k | v), d_head] per position (GPTNeoXAttention.forward)
        w_qkv = r(k + "attention.query_key_value.weight", 3 * h * dh, d).view(h, 3, dh, d)
        for i, part in enumerate("QKV"):
            out[p + f"attn.W_{part}"] = w_qkv[:, i].transpose(1, 2).contiguous()  # [h, d, dh]
        if r.has(k + "attention.query_key_value.bias"):
            b_qkv = r(k + "attention.query_key_value.bias", 3 * h * dh).view(h, 3, dh)
            for i, part in enumerate("QKV"):
                out[p + f"attn.b_{part}"] = b_qkv[:, i].contiguous()
        out[p + "attn.W_O"] = _heads_out(r(k + "attention.dense.weight", d, h * dh), h, dh)
        if r.has(k + "attention.dense.bias"):
            out[p + "attn.b_O"] = r(k + "attention.dense.bias", d)
        out[p + "mlp.W_in"] = r(k + "mlp.dense_h_to_4h.weight", m, d).T.contiguous()
        out[p + "mlp.b_in"] = r(k + "mlp.dense_h_to_4h.bias", m)
        out[p + "mlp.W_out"] = r(k + "mlp.dense_4h_to_h.weight", d, m).T.contiguous()
        out[p + "mlp.b_out"] = r(k + "mlp.dense_4h_to_h.bias", d)
        _ln(out, r, p + "ln1", k + "input_layernorm", d)
        _ln(out, r, p + "ln2", k + "post_attention_layernorm", d)
    _ln(out, r, "ln_final", "final_layer_norm", d)


def _llama(a, r, out):
    d, h, dh, m, kv = a.d_model, a.n_heads, a.d_head, a.d_mlp, a.n_kv_heads
    out["W_E"] = r("embed_tokens.weight", a.vocab_size, d)  # rotary positions: no W_pos
    for l in range(a.n_layers):
        p, k = f"blocks.{l}.", f"layers.{l}."
        for part, heads in (("q", h), ("k", kv), ("v", kv)):
            w = _heads_in(r(k + f"self_attn.{part}_proj.weight", heads * dh, d), heads, dh)
            # grouped-query attention: query head i reads K/V head i // (h / kv) (HF repeat_kv)
            out[p + f"attn.W_{part.upper()}"] = w.repeat_interleave(h // heads, dim=0)
            if r.has(k + f"self_attn.{part}_proj.bias"):
                b = r(k + f"self_attn.{part}_proj.bias", heads * dh).view(heads, dh)
                out[p + f"attn.b_{part.upper()}"] = b.repeat_interleave(h // heads, dim=0)
        out[p + "attn.W_O"] = _heads_out(r(k + "self_attn.o_proj.weight", d, h * dh), h, dh)
        if r.has(k + "self_attn.o_proj.bias"):
            out[p + "attn.b_O"] = r(k + "self_attn.o_proj.bias", d)
        out[p + "mlp.W_gate"] = r(k + "mlp.gate_proj.weight", m, d).T.contiguous()
        out[p + "mlp.W_in"] = r(k + "mlp.up_proj.weight", m, d).T.contiguous()
        out[p + "mlp.W_out"] = r(k + "mlp.down_proj.weight", d, m).T.contiguous()
        has_bias = r.has(k + "mlp.up_proj.bias")
        out[p + "mlp.b_in"] = r(k + "mlp.up_proj.bias", m) if has_bias else torch.zeros(m)
        out[p + "mlp.b_out"] = r(k + "mlp.down_proj.bias", d) if has_bias else torch.zeros(d)
        if has_bias:
            out[p + "mlp.b_gate"] = r(k + "mlp.gate_proj.bias", m)
        _ln(out, r, p + "ln1", k + "input_layernorm", d, bias=False)  # RMSNorm: scale only
        _ln(out, r, p + "ln2", k + "post_attention_layernorm", d, bias=False)
    _ln(out, r, "ln_final", "norm", d, bias=False)


def _bert(a, r, out):
    d, h, dh, m = a.d_model, a.n_heads, a.d_head, a.d_mlp
    out["W_E"] = r("embeddings.word_embeddings.weight", a.vocab_size, d)
    out["W_pos"] = r("embeddings.position_embeddings.weight", a.n_ctx, d)
    out["W_token_type"] = r("embeddings.token_type_embeddings.weight", a.config.type_vocab_size, d)
    _ln(out, r, "ln_embed", "embeddings.LayerNorm", d)
    for l in range(a.n_layers):
        p, k = f"blocks.{l}.", f"encoder.layer.{l}."
        for part, key in (("Q", "query"), ("K", "key"), ("V", "value")):
            out[p + f"attn.W_{part}"] = _heads_in(r(k + f"attention.self.{key}.weight", h * dh, d), h, dh)
            out[p + f"attn.b_{part}"] = r(k + f"attention.self.{key}.bias", h * dh).view(h, dh)
        out[p + "attn.W_O"] = _heads_out(r(k + "attention.output.dense.weight", d, h * dh), h, dh)
        out[p + "attn.b_O"] = r(k + "attention.output.dense.bias", d)
        _ln(out, r, p + "ln1", k + "attention.output.LayerNorm", d)  # post-LN: after attention
        out[p + "mlp.W_in"] = r(k + "intermediate.dense.weight", m, d).T.contiguous()
        out[p + "mlp.b_in"] = r(k + "intermediate.dense.bias", m)
        out[p + "mlp.W_out"] = r(k + "output.dense.weight", d, m).T.contiguous()
        out[p + "mlp.b_out"] = r(k + "output.dense.bias", d)
        _ln(out, r, p + "ln2", k + "output.LayerNorm", d)  # post-LN: after the MLP


_READERS = {"gpt2": _gpt2, "gpt_neox": _gpt_neox, "llama": _llama, "mistral": _llama, "qwen2": _llama,
            "bert": _bert}


@torch.no_grad()
def hf_weights(adapter) -> dict[str, torch.Tensor]:
    """Raw weights of `adapter` (an `HFAdapter`) by TransformerLens name (table above)."""
    out: dict[str, torch.Tensor] = {}
    _READERS[adapter.model_type](adapter, _Reader(adapter.base, adapter.name), out)
    if adapter.has_head:
        d, v = adapter.d_model, adapter.vocab_size
        head = _Reader(adapter.model, adapter.name)
        if adapter.model_type == "bert":
            t = "cls.predictions.transform."
            out["mlm_head.W"] = head(t + "dense.weight", d, d).T.contiguous()
            out["mlm_head.b"] = head(t + "dense.bias", d)
            _ln(out, head, "mlm_head.ln", t + "LayerNorm", d)
        unembed = adapter.model.get_output_embeddings()
        weight = unembed.weight
        if tuple(weight.shape) != (v, d):
            raise UniversalityError(f"{adapter.name}: the unembedding has shape {list(weight.shape)}, the config "
                                    f"implies {[v, d]}; config.json and the weights disagree")
        out["W_U"] = weight.detach().float().cpu().T.contiguous()  # [d_model, vocab]
        if getattr(unembed, "bias", None) is not None:
            out["b_U"] = unembed.bias.detach().float().cpu().clone()
    return out
