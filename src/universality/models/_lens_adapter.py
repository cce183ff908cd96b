"""`LensAdapter`: the `ModelAdapter` interface over a TransformerLens model (optional: transformer-lens 4.x).

Written against transformer-lens 4.x (`TransformerBridge.boot_transformers`, with
`enable_compatibility_mode()` for the classic hook names) and `HookedTransformer`; both provide
`run_with_cache`, `run_with_hooks`, `cfg` and the stacked weight properties used here.
transformer_lens is imported only when this adapter is built. UNTESTED in this repository
(transformer-lens is not installed in its environment).
"""

from __future__ import annotations

import torch

from ..errors import UniversalityError
from ._adapter_base import ModelAdapter, unknown_name

__all__ = ["LensAdapter", "load_lens"]


def load_lens(name: str, *, device: str = "cpu") -> "LensAdapter":
    """Boot `name` through TransformerLens's `TransformerBridge` (4.x)."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        raise UniversalityError("the TransformerLens adapter needs transformer-lens 4.x, which is not installed: "
                                "pip install 'transformer-lens>=4' in a separate environment") from None
    bridge = TransformerBridge.boot_transformers(name, device=device)
    if hasattr(bridge, "enable_compatibility_mode"):
        bridge.enable_compatibility_mode()
    return LensAdapter(bridge, name=name)


class LensAdapter(ModelAdapter):
    """Adapter over a `HookedTransformer` or a `TransformerBridge` in compatibility mode."""

    def __init__(self, model, *, name: str | None = None):
        cfg = model.cfg
        self.model, self.name = model, name or getattr(cfg, "model_name", "transformer_lens")
        self.kind = "decoder"
        self.n_layers, self.d_model, self.d_mlp = cfg.n_layers, cfg.d_model, cfg.d_mlp
        self.n_heads, self.d_head, self.vocab_size, self.n_ctx = cfg.n_heads, cfg.d_head, cfg.d_vocab, cfg.n_ctx
        self.norm_eps = float(cfg.eps)
        self.tokenizer = getattr(model, "tokenizer", None)
        self.bos_token_id = getattr(self.tokenizer, "bos_token_id", None)
        self.pad_token_id = getattr(self.tokenizer, "pad_token_id", None)
        self.device = torch.device(getattr(cfg, "device", None) or "cpu")
        self.unit_sets = {}
        for l in range(self.n_layers):
            self.unit_sets.update({f"blocks.{l}.mlp.hook_pre": self.d_mlp, f"blocks.{l}.mlp.hook_post": self.d_mlp,
                                   f"blocks.{l}.hook_resid_post": self.d_model})

    def _lens_hooks(self, edits):
        for name in edits or {}:
            if name not in self.unit_sets:
                raise UniversalityError(f"{self.name}: cannot edit: " + unknown_name(name, self.unit_sets))
        return [(name, lambda act, hook, edit=edit: edit(act)) for name, edit in (edits or {}).items()]

    @torch.no_grad()
    def run(self, tokens, names=None, *, attention_mask=None, edits=None):
        names = list(self.unit_sets) if names is None else list(names)
        for name in names:
            if name not in self.unit_sets:
                raise UniversalityError(f"{self.name}: " + unknown_name(name, self.unit_sets))
        tokens, attention_mask = self._check_tokens(tokens, attention_mask)
        cache = {}

        def store(act, hook):
            cache[hook.name] = act.detach()

        hooks = self._lens_hooks(edits) + [(name, store) for name in names]
        self.model.run_with_hooks(tokens, attention_mask=attention_mask, fwd_hooks=hooks)
        return {name: cache[name] for name in names}

    @torch.no_grad()
    def logits(self, tokens, *, attention_mask=None, edits=None):
        tokens, attention_mask = self._check_tokens(tokens, attention_mask)
        return self.model.run_with_hooks(tokens, attention_mask=attention_mask, fwd_hooks=self._lens_hooks(edits))

    @torch.no_grad()
    def attention_patterns(self, tokens, *, attention_mask=None):
        tokens, attention_mask = self._check_tokens(tokens, attention_mask)
        names = [f"blocks.{l}.attn.hook_pattern" for l in range(self.n_layers)]
        _, cache = self.model.run_with_cache(tokens, attention_mask=attention_mask, names_filter=names)
        return torch.stack([cache[name] for name in names])  # [layers, batch, heads, query, key]

    @torch.no_grad()
    def weights(self):
        """Weights from the model's stacked properties (as the model holds them: folded if it folded)."""
        m, out = self.model, {}
        out["W_E"], out["W_U"] = m.W_E, m.W_U
        if hasattr(m, "W_pos"):
            out["W_pos"] = m.W_pos
        for key in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "b_in", "W_out", "b_out"):
            stacked = getattr(m, key)  # [layers, ...]
            group = "mlp" if key in ("W_in", "b_in", "W_out", "b_out") else "attn"
            for l in range(self.n_layers):
                out[f"blocks.{l}.{group}.{key}"] = stacked[l]
        return {k: v.detach().float().cpu().clone() for k, v in out.items()}
