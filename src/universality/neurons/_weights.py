"""Per-neuron statistics read from weights (Gurnee et al. 2024), and the weight lookups the roles share.

| name                | input                                  | returns                                         |
|---------------------|----------------------------------------|-------------------------------------------------|
| `weight_statistics` | TransformerLens weights {name: tensor} | per (unit_set, unit): norms, cos, vocab moments |
| `named_weight`      | weights, a name, named axes            | float64 CPU tensor, shape and finiteness checked |
| `row_moments`       | rows [neurons, d], matrix [d, vocab]   | mean, var, skew, kurtosis of each row's product |

Moments are population moments (ddof=0) with Pearson's kurtosis (a Gaussian has 3), as in `_neuron_stats.py`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .._inputs import as_float64_tensor
from ..errors import UniversalityError

__all__ = ["weight_statistics", "named_weight", "row_moments"]

_MOMENTS = ("mean", "var", "skew", "kurtosis")
_W_IN = re.compile(r"blocks\.(\d+)\.mlp\.W_in")


def weight_statistics(weights: Mapping, *, layers: Sequence[int] | None = None, block: int = 256) -> pd.DataFrame:
    """Per MLP neuron, from TransformerLens-named weights; float64 throughout.

    weights : {name: tensor or array}, with for every layer l `blocks.{l}.mlp.W_in` [d_model, d_mlp],
        `blocks.{l}.mlp.b_in` [d_mlp], `blocks.{l}.mlp.W_out` [d_mlp, d_model], and `W_U` [d_model, vocab],
        `W_E` [vocab, d_model].
    layers : the layers to describe, default every l with a `blocks.{l}.mlp.W_in`
    block : neurons per [block, vocab] product, so memory stays ~ block * vocab * 8 bytes (100 MB at 50k)

    Returns one row per (unit_set, unit), unit_set = `blocks.{l}.mlp.hook_post`, with columns
    w_in_norm = |w_in|, w_out_norm = |w_out| (L2), b_in, cos_in_out = cos(w_in, w_out),
    l2_penalty = |w_in|^2 + |w_out|^2 (the reference code's "weight_norm_penalty"; no bias),
    vocab_{mean, var, skew, kurtosis}: moments over the vocabulary of W_U^T w_out [vocab] (what the
    neuron writes to each logit), and embed_{mean, var, skew, kurtosis}: of W_E w_in [vocab] (how each
    token embedding drives it); population variance, Pearson kurtosis.

    W_U is used as given: the caller decides whether to fold ln_final into it (`fold_layernorm` in
    models/_fold.py). Skew and kurtosis do not change when w_out is scaled or when W_U is centred
    over the vocabulary, but do when W_U's columns are rescaled: the reference code uses cosines
    (unit-norm W_U columns); pass `W_U / W_U.norm(dim=0)` to match it.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> w = {"blocks.0.mlp.W_in": torch.randn(4, 6, generator=g), "blocks.0.mlp.b_in": torch.zeros(6),
    ...      "blocks.0.mlp.W_out": torch.randn(6, 4, generator=g), "W_U": torch.randn(4, 10, generator=g),
    ...      "W_E": torch.randn(10, 4, generator=g)}
    >>> weight_statistics(w).shape
    (6, 15)
    """
    if block < 1:
        raise UniversalityError(f"block must be at least 1, got {block}")
    found = sorted(int(match.group(1)) for name in weights if (match := _W_IN.fullmatch(name)))
    if not found:
        raise UniversalityError("weights have no 'blocks.{l}.mlp.W_in'; pass TransformerLens-named MLP weights")
    layers = found if layers is None else list(layers)
    missing = [layer for layer in layers if layer not in found]
    if missing or not layers:
        raise UniversalityError(f"weights have no MLP in layer {missing[0] if missing else '(none asked)'}; "
                                f"layers with one: {found}")
    unembed = named_weight(weights, "W_U", {"d_model": None, "vocab": None})
    d_model = unembed.shape[0]
    embed = named_weight(weights, "W_E", {"vocab": None, "d_model": d_model})
    frames = []
    for layer in layers:
        w_in = named_weight(weights, f"blocks.{layer}.mlp.W_in", {"d_model": d_model, "d_mlp": None}).T
        d_mlp = w_in.shape[0]
        b_in = named_weight(weights, f"blocks.{layer}.mlp.b_in", {"d_mlp": d_mlp})
        w_out = named_weight(weights, f"blocks.{layer}.mlp.W_out", {"d_mlp": d_mlp, "d_model": d_model})
        in_norm, out_norm = w_in.norm(dim=1), w_out.norm(dim=1)  # rows of w_in [d_mlp, d_model] and w_out
        stats = {"unit_set": f"blocks.{layer}.mlp.hook_post", "unit": np.arange(d_mlp),
                 "w_in_norm": in_norm, "w_out_norm": out_norm, "b_in": b_in,
                 "cos_in_out": (w_in * w_out).sum(dim=1) / (in_norm * out_norm),
                 "l2_penalty": in_norm**2 + out_norm**2}
        stats |= row_moments(w_out, unembed, block, "vocab")  # W_U^T w_out, [d_mlp, vocab] in blocks
        stats |= row_moments(w_in, embed.T, block, "embed")  # W_E w_in, [d_mlp, vocab] in blocks
        frames.append(pd.DataFrame({k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in stats.items()}))
    return pd.concat(frames, ignore_index=True)


def named_weight(weights: Mapping, name: str, shape: Mapping[str, int | None]) -> torch.Tensor:
    """weights[name] as finite float64 CPU torch with the named `shape` (None = any size)."""
    if name not in weights:
        raise UniversalityError(f"weights have no {name!r}; pass TransformerLens names (blocks.{{l}}.mlp.W_in, "
                                "b_in, W_out, W_U, W_E)")
    return as_float64_tensor(weights[name], name, shape)


def row_moments(rows: torch.Tensor, matrix: torch.Tensor, block: int, prefix: str) -> dict[str, torch.Tensor]:
    """Mean, var, skew, kurtosis over the columns of rows @ matrix ([neurons, d] @ [d, vocab]), `block` rows
    at a time; two-pass (centred) in float64, NaN where the product is constant."""
    out = {k: torch.empty(rows.shape[0], dtype=torch.float64) for k in _MOMENTS}
    for start in range(0, rows.shape[0], block):
        values = rows[start:start + block] @ matrix  # [block, vocab]
        mean = values.mean(dim=1)
        d = values - mean[:, None]
        d2 = d * d
        var = d2.mean(dim=1)
        safe = torch.where(var > 0, var, math.nan)
        part = slice(start, start + block)
        out["mean"][part], out["var"][part] = mean, var
        out["skew"][part] = (d2 * d).mean(dim=1) / safe**1.5
        out["kurtosis"][part] = (d2 * d2).mean(dim=1) / safe**2
    return {f"{prefix}_{k}": v for k, v in out.items()}
