"""Streaming unit activations of several models over one token set, batch by batch.

Each model runs forward once per batch; every selected unit set comes back as [tokens, units]
with the filtered tokens (BOS, pad) removed, rows aligned across models.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ._hooks import capture

__all__ = ["stream_activations", "token_mask", "batch_count"]


def token_mask(tokens: torch.Tensor, drop: list[int]) -> torch.Tensor:
    """Bool [rows, pos]: True for tokens to keep (not in `drop`)."""
    keep = torch.ones_like(tokens, dtype=torch.bool)
    for token in drop:
        keep &= tokens != token
    return keep


@torch.no_grad()
def stream_activations(models: dict[str, nn.Module], tokens: torch.Tensor, *, unit_sets: list[str],
                       batch_rows: int, drop_tokens: list[int] = (), start_batch: int = 0,
                       device: str = "cpu") -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Yield `{model: {unit_set: Tensor[tokens, units]}}` for each batch of `batch_rows` rows of
    `tokens` [rows, pos], from batch `start_batch` on (to resume a stream)."""
    for model in models.values():
        model.eval()
    for start in range(start_batch * batch_rows, tokens.shape[0], batch_rows):
        rows = tokens[start:start + batch_rows].to(device)  # [batch, pos]
        keep = token_mask(rows, list(drop_tokens))
        batch = {}
        for name, model in models.items():
            with capture(model, unit_sets) as cache:
                model(rows)
            batch[name] = {s: cache[s][keep].float() for s in unit_sets}  # [batch, pos, units] -> [tokens, units]
        yield batch


def batch_count(rows: int, batch_rows: int) -> int:
    return -(-rows // batch_rows)
