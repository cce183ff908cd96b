"""Functional roles of MLP neurons (Gurnee et al. 2024, section 5): prediction, suppression, entropy
and attention-deactivation neurons, from weights and confirmed by interventions.

| function                       | input                              | one row per                         |
|--------------------------------|------------------------------------|-------------------------------------|
| `prediction_neurons`           | weights                            | neuron: vocab_kurtosis, vocab_skew, role |
| `entropy_neuron_scores`        | weights                            | neuron: w_out_norm, null_share      |
| `entropy_intervention`         | adapter, tokens, one neuron        | (neuron, value), with random baselines |
| `attention_deactivation_scores`| adapter, tokens                    | (neuron, later head): score         |
| `bos_attention_patching`       | adapter, tokens, one neuron, value | later head: attention to BOS, clean vs patched |

Weights are TransformerLens-named ({`W_U` [d_model, vocab], `blocks.{l}.mlp.W_out` [d_mlp, d_model]});
the weight-only functions use W_U as given: pass `fold_layernorm(adapter.weights())` to fold
ln_final into W_U (the logits a neuron's output actually moves, up to the final norm's scale).
Neurons are `blocks.{l}.mlp.hook_post` units; their output direction w_out is row n of W_out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch

from ..errors import UniversalityError
from ..models import apply_norm, fold_layernorm
from ._interventions import measure, run_with_edits, set_units
from ._weights import named_weight, row_moments

__all__ = ["prediction_neurons", "entropy_neuron_scores", "entropy_intervention", "attention_deactivation_scores",
           "bos_attention_patching"]

_W_OUT = re.compile(r"blocks\.(\d+)\.mlp\.W_out")
_MLP_POST = re.compile(r"blocks\.(\d+)\.mlp\.hook_post")


def _mlp_layers(weights: Mapping, layers: Sequence[int] | None) -> list[int]:
    found = sorted(int(m.group(1)) for name in weights if (m := _W_OUT.fullmatch(name)))
    if not found:
        raise UniversalityError("weights have no 'blocks.{l}.mlp.W_out'; pass TransformerLens-named weights "
                                "(adapter.weights())")
    layers = found if layers is None else list(layers)
    missing = [l for l in layers if l not in found]
    if missing:
        raise UniversalityError(f"weights have no MLP in layer {missing[0]}; layers with one: {found}")
    return layers


def prediction_neurons(weights: Mapping, *, kurtosis_threshold: float = 10.0,
                       layers: Sequence[int] | None = None) -> pd.DataFrame:
    """Prediction and suppression neurons from the vocabulary composition W_U^T w_out [vocab].

    Per neuron: `vocab_kurtosis` (Pearson, Gaussian = 3) and `vocab_skew` of W_U^T w_out over the
    vocabulary; `role` = 'prediction' when kurtosis > `kurtosis_threshold` and skew > 0 (raises a few
    tokens' logits), 'suppression' when kurtosis > threshold and skew < 0, else None.
    Columns: unit_set, unit, vocab_kurtosis, vocab_skew, role. W_U is used as given (module docstring).

    >>> g = torch.Generator().manual_seed(0)
    >>> w = {"W_U": torch.randn(4, 50, generator=g), "blocks.0.mlp.W_out": torch.randn(3, 4, generator=g)}
    >>> bool(prediction_neurons(w).role.isna().all())
    True
    """
    unembed = named_weight(weights, "W_U", {"d_model": None, "vocab": None})
    frames = []
    for layer in _mlp_layers(weights, layers):
        w_out = named_weight(weights, f"blocks.{layer}.mlp.W_out", {"d_mlp": None, "d_model": unembed.shape[0]})
        moments = row_moments(w_out, unembed, 256, "vocab")  # over W_U^T w_out, [d_mlp] each
        kurtosis, skew = moments["vocab_kurtosis"].numpy(), moments["vocab_skew"].numpy()
        heavy = kurtosis > kurtosis_threshold
        role = np.where(heavy & (skew > 0), "prediction", np.where(heavy & (skew < 0), "suppression", None))
        frames.append(pd.DataFrame({"unit_set": f"blocks.{layer}.mlp.hook_post", "unit": np.arange(len(skew)),
                                    "vocab_kurtosis": kurtosis, "vocab_skew": skew, "role": role}))
    return pd.concat(frames, ignore_index=True)


def entropy_neuron_scores(weights: Mapping, *, null_dims: int | None = None, relative_sv: float = 0.1,
                          layers: Sequence[int] | None = None,
                          no_null_space: Literal["raise", "nan"] = "raise") -> pd.DataFrame:
    """How much of each neuron's output lies in the effective null space of W_U.

    1) SVD of W_U [d_model, vocab] = U S V^T with all d_model left singular vectors U [d_model, d_model]
       (singular values padded with 0 when d_model > vocab);
    2) the null space is spanned by the `null_dims` bottom directions of U when given, else by every
       direction with singular value <= `relative_sv` * the largest;
    3) null_share = |U_null^T w_out|^2 / |w_out|^2 in [0, 1]: near 1 means the neuron barely moves any
       logit directly, yet a large w_out raises the final norm's scale and so flattens the distribution
       (an entropy neuron); rank candidates by null_share, then w_out_norm.

    Columns: unit_set, unit, w_out_norm, null_share, null_dims (directions used).
    no_null_space : {'raise', 'nan'}, default='raise': what happens when W_U has no singular value
        <= `relative_sv` x the largest (and `null_dims` is None): a one-line error, or null_share NaN
        and null_dims 0 (the neurons table, which must not fail on a model with a full-rank W_U).

    >>> w = {"W_U": torch.eye(3)[:, :2], "blocks.0.mlp.W_out": torch.eye(3)}
    >>> entropy_neuron_scores(w).null_share.tolist()
    [0.0, 0.0, 1.0]
    """
    unembed = named_weight(weights, "W_U", {"d_model": None, "vocab": None})
    d_model = unembed.shape[0]
    # 1) all left singular vectors, singular values padded to d_model. The right singular vectors are
    # not needed: the full V would be [vocab, vocab] (GPT-2: 50,257^2 float64 = 20 GB), so it is asked
    # for only when d_model > vocab (V is then smaller than U); otherwise the reduced U is already square
    u, s, _ = torch.linalg.svd(unembed, full_matrices=d_model > unembed.shape[1])  # u [d_model, d_model]
    s = torch.cat([s, s.new_zeros(d_model - s.numel())])  # [d_model], descending
    # 2) the effective null space
    if null_dims is not None:
        if not 1 <= null_dims <= d_model:
            raise UniversalityError(f"null_dims must be in [1, {d_model}] (d_model), got {null_dims}")
        null = u[:, d_model - null_dims:]  # [d_model, null_dims]
    else:
        keep = s <= relative_sv * s[0]
        if no_null_space not in ("raise", "nan"):
            raise UniversalityError(f"no_null_space must be 'raise' or 'nan', not {no_null_space!r}")
        if not bool(keep.any()) and no_null_space == "raise":
            raise UniversalityError(f"W_U has no singular value <= {relative_sv} x the largest (smallest ratio "
                                    f"{float(s[-1] / s[0]):.3g}); raise relative_sv or pass null_dims=k")
        null = u[:, keep]
    frames = []
    for layer in _mlp_layers(weights, layers):
        w_out = named_weight(weights, f"blocks.{layer}.mlp.W_out", {"d_mlp": None, "d_model": d_model})
        norm2 = (w_out**2).sum(dim=1)  # [d_mlp]
        # 3) the share of |w_out|^2 in the null space
        share = ((w_out @ null) ** 2).sum(dim=1) / torch.where(norm2 > 0, norm2, math.nan)
        if null.shape[1] == 0:  # no null space (no_null_space="nan"): no share to report
            share = torch.full_like(norm2, math.nan)
        frames.append(pd.DataFrame({"unit_set": f"blocks.{layer}.mlp.hook_post", "unit": np.arange(len(norm2)),
                                    "w_out_norm": norm2.sqrt().numpy(), "null_share": share.numpy(),
                                    "null_dims": null.shape[1]}))
    return pd.concat(frames, ignore_index=True)


def entropy_intervention(adapter, tokens: torch.Tensor, unit_set: str, unit: int, values: Sequence[float], *,
                         random_baseline: int = 5, seed: int = 0) -> pd.DataFrame:
    """Fix one neuron's activation to each of `values` at every position of tokens [batch, pos] and
    measure the next-token distribution; the same for `random_baseline` other neurons of the same unit
    set, drawn with `seed`, as a baseline (Gurnee et al.: entropy neurons move entropy far more).

    Columns: unit_set, unit, baseline (True for the random neurons), value, entropy, loss, ln_scale,
    kl (clean || edited) and entropy_clean, loss_clean, ln_scale_clean; ln_scale columns are NaN when the
    adapter has no `ln_final.hook_scale`.
    """
    if unit_set not in adapter.unit_sets:
        raise UniversalityError(f"{adapter.name}: no unit set {unit_set!r}; unit sets: {', '.join(adapter.unit_sets)}")
    n_units = adapter.unit_sets[unit_set]
    if not 0 <= unit < n_units or not 0 <= random_baseline < n_units:
        raise UniversalityError(f"{unit_set} has {n_units} units: unit must be in [0, {n_units}) and "
                                f"random_baseline in [0, {n_units - 1}], got {unit} and {random_baseline}")
    # 1) the neuron and its random baselines, drawn without it
    others = torch.tensor([u for u in range(n_units) if u != unit])
    generator = torch.Generator().manual_seed(seed)
    baseline = others[torch.randperm(len(others), generator=generator)[:random_baseline]].tolist()
    # 2) the clean run once, then one edited run per (neuron, value)
    clean, logp0 = measure(adapter, tokens, {})
    rows = []
    for neuron in [unit, *baseline]:
        for value in values:
            edited, logp1 = measure(adapter, tokens, {unit_set: set_units([neuron], float(value))})
            kl = float((logp0.exp() * (logp0 - logp1)).sum(dim=-1).mean())
            rows.append({"unit_set": unit_set, "unit": neuron, "baseline": neuron != unit, "value": float(value),
                         "entropy": edited["entropy"], "loss": edited["loss"],
                         "ln_scale": edited.get("ln_scale", math.nan), "kl": kl,
                         "entropy_clean": clean["entropy"], "loss_clean": clean["loss"],
                         "ln_scale_clean": clean.get("ln_scale", math.nan)})
    return pd.DataFrame(rows)


def _layer_of(adapter, unit_set: str) -> int:
    match = _MLP_POST.fullmatch(unit_set)
    if match is None or unit_set not in adapter.unit_sets:
        mlps = [n for n in adapter.unit_sets if _MLP_POST.fullmatch(n)]
        raise UniversalityError(f"{adapter.name}: {unit_set!r} is not an MLP neuron set; choose one of: "
                                f"{', '.join(mlps)}")
    return int(match.group(1))


def _norm_eps(adapter, ln_eps: float | None) -> float:
    """The epsilon of the blocks' ln1: `ln_eps` when given, else the adapter's `norm_eps`."""
    eps = getattr(adapter, "norm_eps", None) if ln_eps is None else ln_eps
    if eps is None:
        raise UniversalityError(f"{adapter.name}: the adapter does not say its norm epsilon; pass ln_eps= the "
                                "model's (config.layer_norm_epsilon, layer_norm_eps or rms_norm_eps)")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise UniversalityError(f"ln_eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _bos_keys(adapter, raw: Mapping, tokens: torch.Tensor, ln_eps: float | None = None) -> dict[int, torch.Tensor]:
    """{layer l >= 1: the key at position 0 of every head [heads, d_head]}, averaged over rows.

    Recomputed from the residual stream entering layer l (`blocks.{l-1}.hook_resid_post`) and the
    raw weights: k = LN1(x) @ W_K + b_K, LN1 = LayerNorm (ln1.b present), RMSNorm (ln1.w only) or
    none (post-LN encoders, whose residual stream is already normalised), with the model's epsilon
    (`_norm_eps`: GPT-2 and Pythia 1e-5, Llama-style models often 1e-6). Rotary positions leave
    position 0 unrotated, so the key is exact for GPT-NeoX and Llama too."""
    names = [f"blocks.{l - 1}.hook_resid_post" for l in range(1, adapter.n_layers)]
    resid = adapter.run(tokens, names)
    post_ln = "ln_embed.w" in raw
    eps = None if post_ln else _norm_eps(adapter, ln_eps)
    keys = {}
    for l in range(1, adapter.n_layers):
        x = resid[f"blocks.{l - 1}.hook_resid_post"][:, 0].double().cpu()  # [batch, d_model]
        p = f"blocks.{l}."
        if not post_ln:
            x = apply_norm(x, raw, p + "ln1", eps)
        k = torch.einsum("bd,hde->bhe", x, raw[p + "attn.W_K"].double())  # [batch, heads, d_head]
        if p + "attn.b_K" in raw:
            k = k + raw[p + "attn.b_K"].double()
        keys[l] = k.mean(dim=0)  # [heads, d_head]
    return keys


def attention_deactivation_scores(adapter, tokens: torch.Tensor, *, layers: Sequence[int] | None = None,
                                  ln_eps: float | None = None) -> pd.DataFrame:
    """Per MLP neuron (layer l) and head of every later layer l' > l: score = w_out^T W_Q k_BOS / sqrt(d_head).

    1) k_BOS [heads, d_head]: the head's key at position 0 of tokens [batch, pos] (rows should start
       with BOS), recomputed from the residual stream and the raw weights (`_bos_keys`) with the
       model's norm epsilon `ln_eps` (default: `adapter.norm_eps`; pass it when the adapter has none);
    2) W_Q [heads, d_model, d_head] with ln1 folded in (`fold_layernorm`; raw for post-LN encoders),
       so w_out^T W_Q is what the neuron adds to the query per unit activation, up to the norm's
       1/scale, which is left out as in the paper;
    3) score < 0: the neuron firing lowers the head's attention logit on BOS, so the head attends
       elsewhere (a deactivating head stops resting on BOS); b_Q_term = b_Q . k_BOS / sqrt(d_head)
       is the folded query bias's part of that logit (the same for every neuron; 0 without b_Q).

    Columns: unit_set, unit, head_layer, head, score, b_Q_term.
    """
    raw = adapter.weights()
    folded = raw if "ln_embed.w" in raw else fold_layernorm(raw)
    keys = _bos_keys(adapter, raw, tokens, ln_eps)
    frames = []
    for layer in _mlp_layers(folded, layers):
        w_out = folded[f"blocks.{layer}.mlp.W_out"].double()  # [d_mlp, d_model]
        for head_layer in range(layer + 1, adapter.n_layers):
            p, k = f"blocks.{head_layer}.attn.", keys[head_layer]  # k [heads, d_head]
            w_qk = torch.einsum("hde,he->dh", folded[p + "W_Q"].double(), k)  # [d_model, heads]: W_Q k_BOS
            score = w_out @ w_qk / math.sqrt(adapter.d_head)  # [d_mlp, heads]
            b_q = folded.get(p + "b_Q")
            bias = ((b_q.double() * k).sum(dim=1) / math.sqrt(adapter.d_head)).numpy() if b_q is not None \
                else np.zeros(adapter.n_heads)
            d_mlp, heads = score.shape
            frames.append(pd.DataFrame({"unit_set": f"blocks.{layer}.mlp.hook_post",
                                        "unit": np.repeat(np.arange(d_mlp), heads), "head_layer": head_layer,
                                        "head": np.tile(np.arange(heads), d_mlp), "score": score.reshape(-1).numpy(),
                                        "b_Q_term": np.tile(bias, d_mlp)}))
    if not frames:
        raise UniversalityError(f"{adapter.name}: no attention layer follows the MLP layers asked; a neuron "
                                "can only deactivate heads of later layers")
    return pd.concat(frames, ignore_index=True)


def bos_attention_patching(adapter, tokens: torch.Tensor, unit_set: str, unit: int, *, value: float) -> pd.DataFrame:
    """Attention to BOS (key position 0) of every head after the neuron's layer, clean and with the
    neuron's activation set to `value` at every position of tokens [batch, pos].

    The patch is the neuron's total effect (it reaches later heads by every path, not only the query);
    a strong negative `delta` confirms an attention-deactivation score. Attention to BOS is the mean
    of pattern[..., query, 0] over rows and query positions > 0.

    Columns: head_layer, head, bos_clean, bos_patched, delta (= patched - clean).
    """
    layer = _layer_of(adapter, unit_set)
    if not 0 <= unit < adapter.unit_sets[unit_set]:
        raise UniversalityError(f"{unit_set} has {adapter.unit_sets[unit_set]} units, got unit {unit}")
    if tokens.shape[1] < 2:
        raise UniversalityError(f"need at least 2 positions to measure attention to BOS, got {list(tokens.shape)}")
    clean = adapter.attention_patterns(tokens)  # [layers, batch, heads, query, key]
    patched, _ = run_with_edits(adapter, tokens, {unit_set: set_units([unit], value)}, patterns=True)
    rows = []
    for pattern, column in ((clean, "bos_clean"), (patched, "bos_patched")):
        bos = pattern[layer + 1:, :, :, 1:, 0].double().mean(dim=(1, 3))  # [later layers, heads]
        rows.append(pd.DataFrame({"head_layer": np.repeat(np.arange(layer + 1, adapter.n_layers), adapter.n_heads),
                                  "head": np.tile(np.arange(adapter.n_heads), adapter.n_layers - layer - 1),
                                  column: bos.reshape(-1).cpu().numpy()}))
    out = rows[0].merge(rows[1], on=["head_layer", "head"])
    out["delta"] = out.bos_patched - out.bos_clean
    return out
