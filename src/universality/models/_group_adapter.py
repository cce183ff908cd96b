"""`GroupAdapter`: the `ModelAdapter` interface over the group-composition models (`GroupMLP`,
`GroupTransformer`), so they stream through the same collect step as language models.

A group model reads a pair (a, b), not a token sequence. The adapter names each pair by one
"token", its pair index a * |G| + b (the order every group table uses), so a batch of pairs is
a token tensor [pairs, 1] and every unit set comes back as [pairs, 1, units]:

| member          | value                                                           |
|-----------------|-----------------------------------------------------------------|
| tokens          | [pairs, 1], pair index a * order + b, in [0, order^2)           |
| `run`           | {unit_set: [pairs, 1, units]} (`mlp.hook_post`, ...)            |
| `vocab_size`    | order^2 (one "token" per pair); `n_ctx` 1                       |
| `weights()`     | the model's parameters by their own names (no TransformerLens equivalents) |

>>> import torch
>>> from universality.models import GroupMLP, adapt
>>> adapter = adapt(GroupMLP(6, embed_dim=8, hidden=16))
>>> adapter.run(torch.arange(36).reshape(-1, 1), ["mlp.hook_post"])["mlp.hook_post"].shape
torch.Size([36, 1, 16])
"""

from __future__ import annotations

import torch

from ..errors import UniversalityError
from ._adapter_base import ModelAdapter, Site
from ._group_models import GroupMLP, GroupTransformer

__all__ = ["GroupAdapter"]


class GroupAdapter(ModelAdapter):
    """Adapter for a `GroupMLP` or `GroupTransformer` in memory; pairs as one-token rows (above)."""

    kind = "group"

    def __init__(self, model: GroupMLP | GroupTransformer, *, name: str | None = None):
        self.model, self.name = model.eval(), name or type(model).__name__
        self.order = model.order
        self.n_layers, self.d_mlp = 1, model.units
        self.d_model = getattr(model, "d_model", model.units)
        self.n_heads, self.d_head = getattr(model, "n_heads", 0), getattr(model, "d_head", 0)
        self.vocab_size, self.n_ctx = model.order ** 2, 1
        self.device = next(model.parameters()).device
        self.unit_sets = model.unit_sets()
        self._points = model.hook_points()

    def _sites(self) -> dict[str, Site]:
        # hooks see [pairs, units]; reported as [pairs, pos=1, units] like every other adapter
        return {name: Site(point, "output", read=lambda value: value.unsqueeze(1))
                for name, point in self._points.items() if name in self.unit_sets}

    def _forward(self, tokens, attention_mask, *, logits=True):
        pairs = tokens[:, 0]  # [pairs]
        out = self.model(pairs // self.order, pairs % self.order)  # [pairs, order]
        return out.unsqueeze(1)  # [pairs, 1, order]

    def _patterns(self, tokens, attention_mask):
        raise UniversalityError(f"{self.name}: a group model reads (a, b, =) inside one pair-token, so it has "
                                "no token-level attention patterns; read blocks.0.attn.hook_pattern with "
                                "universality.collect.capture instead")

    @torch.no_grad()
    def weights(self) -> dict[str, torch.Tensor]:
        """Every parameter by its module path (`embed_left`, `linear.weight`, ...), float32 on the CPU."""
        return {name: p.detach().float().cpu().clone() for name, p in self.model.named_parameters()}
