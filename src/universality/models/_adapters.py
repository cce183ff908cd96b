"""Model adapters: `load_model` (Hugging Face, from disk or the local hub cache) and `adapt`
(a model already in memory). Both return a `ModelAdapter`:

| member                                         | returns                                  |
|------------------------------------------------|------------------------------------------|
| `unit_sets`                                    | {name: units}, TransformerLens names     |
| `run(tokens [batch, pos], names, attention_mask=, edits=)` | {name: [batch, pos, units]}  |
| `attention_patterns(tokens, attention_mask=)`  | [layers, batch, heads, query, key]       |
| `logits(tokens, attention_mask=, edits=)`      | [batch, pos, vocab]                      |
| `weights()`                                    | {TransformerLens name: float32 CPU tensor} |
| `tokenizer`, `kind`, `name`, `n_layers`, `d_model`, `d_mlp`, `n_heads`, `d_head`, `vocab_size`, `n_ctx`, `bos_token_id`, `pad_token_id` | |

`edits` maps unit-set names to callables `[batch, pos, units] -> [batch, pos, units]` whose result
replaces the activation inside the forward pass. `fold_layernorm(adapter.weights())` folds
pre-LN norms into the weights that read them.

>>> import torch
>>> from universality.config import ModelConfig
>>> from universality.models import TinyTransformer
>>> tiny = adapt(TinyTransformer(ModelConfig(d_model=16, n_heads=2, d_mlp=32, n_layers=1), vocab_size=10, n_ctx=8))
>>> acts = tiny.run(torch.zeros(2, 8, dtype=torch.long), ["blocks.0.mlp.hook_post"])
>>> acts["blocks.0.mlp.hook_post"].shape
torch.Size([2, 8, 32])
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import UniversalityError
from ._adapter_base import ModelAdapter
from ._group_adapter import GroupAdapter
from ._group_models import GroupMLP, GroupTransformer
from ._hf_adapter import ARCHITECTURES, HFAdapter
from ._tiny_adapter import TinyAdapter
from ._tiny_transformer import TinyTransformer

__all__ = ["load_model", "adapt"]


def load_model(path_or_hub_name: str | Path, *, device: str = "cpu") -> ModelAdapter:
    """Load a Hugging Face model (and its tokenizer) from a local directory or, by hub name, from
    the local hub cache (nothing is downloaded), float32 on `device`.

    Supported `model_type`s: gpt2, gpt_neox (Pythia), llama, mistral, qwen2, bert (incl. MiniLM).
    """
    from ._hf_load import load_hf
    return load_hf(path_or_hub_name, device=device)


def adapt(model: nn.Module, *, name: str | None = None, tokenizer=None, **kwargs) -> ModelAdapter:
    """An adapter for a model in memory: a `TinyTransformer` (kwargs: `bos_token_id`,
    `pad_token_id`), a `transformers.PreTrainedModel` of a supported architecture, or a
    TransformerLens `HookedTransformer` / `TransformerBridge`, or a group model (`GroupMLP`,
    `GroupTransformer`: pairs as one-token rows, see `GroupAdapter`). An adapter is returned unchanged."""
    if isinstance(model, ModelAdapter):
        return model
    if isinstance(model, (GroupMLP, GroupTransformer)):
        return GroupAdapter(model, name=name)
    if isinstance(model, TinyTransformer):
        return TinyAdapter(model, name=name or "TinyTransformer", tokenizer=tokenizer, **kwargs)
    if hasattr(model, "config") and hasattr(model, "base_model") and hasattr(model.config, "model_type"):
        return HFAdapter(model, name=name, tokenizer=tokenizer, **kwargs)
    if hasattr(model, "run_with_hooks") and hasattr(model, "cfg"):
        from ._lens_adapter import LensAdapter
        return LensAdapter(model, name=name)
    raise UniversalityError(f"cannot adapt a {type(model).__name__}; pass a TinyTransformer, a group model, "
                            f"a transformers PreTrainedModel ({', '.join(ARCHITECTURES)}) or a TransformerLens model")

