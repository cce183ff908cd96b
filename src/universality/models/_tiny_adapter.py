"""`TinyAdapter`: the `ModelAdapter` interface over the repo's own `TinyTransformer`.

Every hook point of the model is a unit set (except `hook_pattern`), under its own
TransformerLens name; `component_sites` adds per-head and per-block outputs for patching (`circuits`); `weights()` reads the same TransformerLens names as the Hugging Face adapter:

| name                                   | shape                       | source                        |
|----------------------------------------|-----------------------------|-------------------------------|
| W_E / W_pos                            | [vocab, d_model] / [n_ctx, d_model] | embed / pos_embed     |
| W_U                                    | [d_model, vocab]            | unembed.weight^T              |
| blocks.{l}.attn.W_Q, W_K, W_V          | [n_heads, d_model, d_head]  | attn.qkv split in three       |
| blocks.{l}.attn.b_Q, b_K, b_V          | [n_heads, d_head]           |                               |
| blocks.{l}.attn.W_O, b_O               | [n_heads, d_head, d_model], [d_model] | attn.out            |
| blocks.{l}.mlp.W_in, b_in              | [d_model, d_mlp], [d_mlp]   | mlp.fc_in                     |
| blocks.{l}.mlp.W_out, b_out            | [d_mlp, d_model], [d_model] | mlp.fc_out                    |
| blocks.{l}.ln1.w/.b, ln2.w/.b, ln_final.w/.b | [d_model]             | the LayerNorms                |
"""

from __future__ import annotations

import torch

from ..errors import UniversalityError
from ._adapter_base import ModelAdapter, Site
from ._tiny_transformer import TinyTransformer

__all__ = ["TinyAdapter"]


class TinyAdapter(ModelAdapter):
    """Adapter for a `TinyTransformer` in memory (a decoder; no tokenizer unless one is given).

    `attention_mask` must be right padding (ones then zeros per row): the model is causal, so
    positions before the padding never see it and the mask is then exact.
    """

    kind = "decoder"

    def __init__(self, model: TinyTransformer, *, name: str = "TinyTransformer", tokenizer=None,
                 bos_token_id: int | None = None, pad_token_id: int | None = None):
        config = model.config
        self.model, self.name, self.tokenizer = model.eval(), name, tokenizer
        self.n_layers, self.d_model, self.d_mlp = config.n_layers, config.d_model, config.d_mlp
        self.n_heads, self.d_head = config.n_heads, config.d_model // config.n_heads
        self.vocab_size, self.n_ctx = model.vocab_size, model.n_ctx
        self.bos_token_id, self.pad_token_id = bos_token_id, pad_token_id
        self.norm_eps = float(model.blocks[0].ln1.eps)
        self.device = next(model.parameters()).device
        self.unit_sets = model.unit_sets()
        self._points = model.hook_points()

    def _sites(self) -> dict[str, Site]:
        sites = {name: Site(point, "output") for name, point in self._points.items()
                 if not name.endswith("hook_pattern")}
        sites.update(self.component_sites())
        return sites

    def component_sites(self) -> dict[str, Site]:
        """Sites that can be edited (and read through an edit) but are not unit sets, for patching:
        `blocks.{l}.attn.hook_z` [batch, pos, heads * d_head] (every head's z, head-major: the input
        of the output projection; TransformerLens's hook_z flattened), `blocks.{l}.hook_attn_out` and
        `blocks.{l}.hook_mlp_out` [batch, pos, d_model] (the attention and MLP outputs added to the residual)."""
        sites = {}
        for l, block in enumerate(self.model.blocks):
            sites[f"blocks.{l}.attn.hook_z"] = Site(block.attn.out, "input")
            sites[f"blocks.{l}.hook_attn_out"] = Site(block.attn, "output")
            sites[f"blocks.{l}.hook_mlp_out"] = Site(block.mlp, "output")
        return sites

    def _forward(self, tokens, attention_mask, *, logits=True):
        if attention_mask is not None:
            right_padded = attention_mask.cummin(dim=1).values == attention_mask
            if not bool(right_padded.all()):
                raise UniversalityError(f"{self.name}: a TinyTransformer takes right padding only "
                                        "(each attention_mask row ones then zeros)")
        return self.model(tokens)  # [batch, pos, vocab]

    def _patterns(self, tokens, attention_mask):
        patterns: dict[int, torch.Tensor] = {}
        handles = []
        try:
            for layer, block in enumerate(self.model.blocks):
                def store(module, args, output, layer=layer):
                    patterns[layer] = output.detach()  # [batch, heads, query, key]
                handles.append(block.attn.hook_pattern.register_forward_hook(store))
            self._forward(tokens, attention_mask)
        finally:
            for handle in handles:
                handle.remove()
        return [patterns[layer] for layer in range(self.n_layers)]

    @torch.no_grad()
    def weights(self) -> dict[str, torch.Tensor]:
        """Raw (unfolded) weights by TransformerLens name, float32 on the CPU (table above)."""
        m, d, h, dh = self.model, self.d_model, self.n_heads, self.d_head

        def get(t):
            return t.detach().float().cpu().clone()

        out = {"W_E": get(m.embed.weight), "W_pos": get(m.pos_embed.weight), "W_U": get(m.unembed.weight.T),
               "ln_final.w": get(m.ln_final.weight), "ln_final.b": get(m.ln_final.bias)}
        for l, block in enumerate(m.blocks):
            p = f"blocks.{l}."
            w_qkv, b_qkv = get(block.attn.qkv.weight), get(block.attn.qkv.bias)  # [3 d, d], [3 d]
            for part, w, b in zip("QKV", w_qkv.split(d), b_qkv.split(d)):
                out[p + f"attn.W_{part}"] = w.view(h, dh, d).transpose(1, 2).contiguous()  # [h, d, dh]
                out[p + f"attn.b_{part}"] = b.view(h, dh)
            out[p + "attn.W_O"] = get(block.attn.out.weight).T.reshape(h, dh, d).contiguous()  # [h, dh, d]
            out[p + "attn.b_O"] = get(block.attn.out.bias)
            out[p + "mlp.W_in"] = get(block.mlp.fc_in.weight).T.contiguous()  # [d, d_mlp]
            out[p + "mlp.b_in"] = get(block.mlp.fc_in.bias)
            out[p + "mlp.W_out"] = get(block.mlp.fc_out.weight).T.contiguous()  # [d_mlp, d]
            out[p + "mlp.b_out"] = get(block.mlp.fc_out.bias)
            for ln in ("ln1", "ln2"):
                out[p + f"{ln}.w"] = get(getattr(block, ln).weight)
                out[p + f"{ln}.b"] = get(getattr(block, ln).bias)
        return out
