"""`fold_layernorm`: fold pre-LayerNorm scales and biases into the weights that read the norm.

A pre-LN block reads `LN(x) = w * x_hat + b` with `x_hat = (x - mean) / std` (RMSNorm:
`w * x / rms`, no b). For any matrix `W` [d_model, n] and bias `c` [n] that read it:

    LN(x) @ W + c = x_hat @ (w[:, None] * W) + (b @ W + c)

so, TransformerLens-style (`fold_layer_norm`):
1) ln1 folds into W_Q, W_K, W_V [heads, d_model, d_head] and b_Q, b_K, b_V [heads, d_head];
2) ln2 folds into W_in (and W_gate) [d_model, d_mlp] and b_in (b_gate) [d_mlp];
3) ln_final folds into W_U [d_model, vocab] and b_U [vocab] (always present after folding);
4) with `center=True` and a LayerNorm (its `.b` present), every folded W is centred over d_model
   (`W -= W.mean(d_model)`): x_hat has zero mean, so this changes no output. RMSNorm inputs
   are not centred, so RMSNorm weights are never centred. W_E / W_pos / W_out are not centred
   (TransformerLens's separate `center_writing_weights`).
The `ln*.w` / `.b` entries are removed: after folding each norm is the bare normalisation.

Post-LN encoders (BERT: `ln_embed.*` present) are refused: their residual stream *is* the
LayerNorm output (the skip connection carries `w * x_hat + b`), so a scale cannot move into the
next reader without changing the stream itself.
"""

from __future__ import annotations

import torch

from ..errors import UniversalityError

__all__ = ["fold_layernorm", "is_post_layernorm", "apply_norm"]


def fold_layernorm(weights: dict[str, torch.Tensor], *, center: bool = True) -> dict[str, torch.Tensor]:
    """A copy of `weights` (from an adapter's `weights()`) with every LayerNorm folded (see above).

    >>> import torch
    >>> w = {"W_U": torch.ones(3, 2), "ln_final.w": torch.tensor([1., 2., 3.]), "ln_final.b": torch.zeros(3)}
    >>> folded = fold_layernorm(w, center=False)
    >>> folded["W_U"][:, 0].tolist(), sorted(folded)
    ([1.0, 2.0, 3.0], ['W_U', 'b_U'])
    """
    if is_post_layernorm(weights):
        raise UniversalityError("fold_layernorm folds pre-LayerNorm models only; these weights are post-LN "
                                "(BERT-style), whose residual stream is the LayerNorm output: use them unfolded")
    out = {name: tensor.clone() for name, tensor in weights.items()}
    layers = sorted({int(name.split(".")[1]) for name in out if name.startswith("blocks.")})
    for l in layers:
        p = f"blocks.{l}."
        _fold(out, p + "ln1", [(p + f"attn.W_{x}", p + f"attn.b_{x}") for x in "QKV"], center)
        _fold(out, p + "ln2", [(p + "mlp.W_in", p + "mlp.b_in"), (p + "mlp.W_gate", p + "mlp.b_gate")], center)
    if "ln_final.w" in out and "W_U" in out:
        out.setdefault("b_U", torch.zeros(out["W_U"].shape[-1]))  # [vocab]; stays zero under RMSNorm
    _fold(out, "ln_final", [("W_U", "b_U")], center)
    return out


def _fold(out: dict, ln: str, readers: list[tuple[str, str]], center: bool) -> None:
    """Fold norm `ln` into each (W, b) reader present; W is [..., d_model, n] (heads first for attention)."""
    if f"{ln}.w" not in out:
        return
    scale, shift = out.pop(f"{ln}.w"), out.pop(f"{ln}.b", None)  # [d_model]
    for w_name, b_name in readers:
        if w_name not in out:
            continue
        w = out[w_name]  # [d_model, n] or [heads, d_model, d_head]
        if w.shape[-2] != scale.shape[0]:
            raise UniversalityError(f"cannot fold {ln} into {w_name}: shapes {list(scale.shape)} and {list(w.shape)}")
        if shift is not None:
            bias = out.get(b_name, torch.zeros(w.shape[:-2] + w.shape[-1:]))
            out[b_name] = bias + torch.einsum("d,...dn->...n", shift, w)  # b @ W + c
        w = scale[:, None] * w  # diag(w) @ W
        if center and shift is not None:
            w = w - w.mean(dim=-2, keepdim=True)
        out[w_name] = w


def is_post_layernorm(weights: dict[str, torch.Tensor]) -> bool:
    """True for post-LN (BERT-style) weights, whose embedding output is normalised (`ln_embed`)."""
    return "ln_embed.w" in weights


def apply_norm(x: torch.Tensor, weights: dict[str, torch.Tensor], prefix: str, eps: float) -> torch.Tensor:
    """The raw (unfolded) pre-norm `prefix` (e.g. "blocks.3.ln1") of x [..., d_model], in x's dtype:
    LayerNorm (x - mean) / sqrt(var + eps) * w + b when `prefix.b` is in `weights`, else RMSNorm
    x / sqrt(mean x^2 + eps) * w."""
    w, b = weights[prefix + ".w"].to(x), weights.get(prefix + ".b")
    if b is not None:
        x = x - x.mean(dim=-1, keepdim=True)
    x = x / (x.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt() * w
    return x if b is None else x + b.to(x)
