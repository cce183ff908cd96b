"""Head roles of the indirect-object circuit (Wang et al. 2022), each from its defining score.

Scores per head (layer-major), from attention patterns, weights and one path patch:

| score             | definition                                                                 |
|-------------------|----------------------------------------------------------------------------|
| `previous_token`  | on tokens [BOS, r, r] (r uniform random, `neurons._heads.induction_tokens`): mean attention from q to q - 1 |
| `duplicate_token` | the same tokens: mean attention from each second-half position to the earlier copy of its token |
| `induction`       | the same tokens: mean attention from each second-half position to the token after that copy |
| `attn_io`, `attn_s1`, `attn_s2` | on clean IOI prompts: mean attention from the final position to IO, S1, S2 |
| `copy`            | fraction of prompts where the head's OV circuit, applied to the residual at IO's position (after the layer's LayerNorm) and read through the centred, ln_final-scaled unembedding, ranks IO strictly first among the prompts' names |
| `negative_copy`   | the same fraction with IO ranked strictly last (the head writes "not IO")  |
| `s_inhibition`    | path patching of the head's output into the name movers' *queries* only: the drop of their attention difference IO - S (S1 and S2) at the final position when the head's output there comes from the corrupted prompt (S2 := IO), over the clean difference, summed over name movers in later layers |

Scores from weights are recomputed in float64 from `adapter.weights()` (raw, not folded): each pre-norm is a
LayerNorm when its `.b` is present, else an RMSNorm; q . k is scaled by `adapter.attention_scale(layer)` and
rotated by `adapter.rotary` (GPT-NeoX, Llama); absent biases are zeros.

S-inhibition is a simplified path patch: the sender's output reaches each receiver's query directly
(no path through intermediate components), keys and values stay clean, and the effect is read on the
receivers' attention rather than on the logits. S is both of its positions: attention moved from S1 to S2 still
copies S, so it is no inhibition. The score reaches 2 when the patch turns a name mover from IO alone to S alone
(`circuits.ioi_reference_model`'s S-inhibition head). It is NaN for heads with no name mover after them.

Roles (`classify_heads`, thresholds in `RoleThresholds`; a head may hold several):

| role                  | condition                                  | score                 |
|-----------------------|--------------------------------------------|-----------------------|
| previous_token        | previous_token >= previous_token threshold | previous_token        |
| duplicate_token       | duplicate_token >= threshold               | duplicate_token       |
| induction             | induction >= threshold                     | induction             |
| name_mover            | attn_io >= attention and copy >= copy      | attn_io * copy        |
| negative_name_mover   | attn_io >= attention and negative_copy >= copy | attn_io * negative_copy |
| s_inhibition          | s_inhibition >= threshold                  | s_inhibition          |
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import UniversalityError
from ..models import apply_norm
from ..neurons._heads import _offset_mean, induction_tokens
from ..tasks import IOIPrompts
from ._patching import check_components, run_components, z_site

__all__ = ["ROLES", "RoleThresholds", "repeated_sequence_scores", "name_mover_scores", "s_inhibition_scores",
           "head_role_scores", "classify_heads", "heads_with_role"]

ROLES = ("previous_token", "duplicate_token", "induction", "s_inhibition", "name_mover", "negative_name_mover")


@dataclass(frozen=True)
class RoleThresholds:
    """Where a score makes a role (module docstring). Attention scores are probabilities in [0, 1];
    `copy` a fraction of prompts (chance is 1 / names); `s_inhibition` a fraction of the name movers'
    clean attention difference."""

    previous_token: float = 0.4
    duplicate_token: float = 0.4
    induction: float = 0.4
    attention: float = 0.2  # name movers: attention from the final position to IO
    copy: float = 0.5
    s_inhibition: float = 0.1


def _head_frame(layers: int, heads: int, **columns: torch.Tensor) -> pd.DataFrame:
    """Columns layer, head and each [layers, heads] score flattened layer-major."""
    frame = {"layer": np.repeat(np.arange(layers), heads), "head": np.tile(np.arange(heads), layers)}
    frame.update({name: value.reshape(-1).double().cpu().numpy() for name, value in columns.items()})
    return pd.DataFrame(frame)


@torch.no_grad()
def repeated_sequence_scores(adapter, *, batch: int = 32, half: int | None = None, seed: int = 0) -> pd.DataFrame:
    """previous_token, duplicate_token and induction [per head] on `batch` rows [BOS, r_1..r_half, r_1..r_half]
    (half = min(16, room) by default). Columns layer, head and the three scores."""
    start = 0 if adapter.bos_token_id is None else 1
    half = min(16, (adapter.n_ctx - start) // 2) if half is None else half
    if half < 2 or start + 2 * half > adapter.n_ctx:
        raise UniversalityError(f"repeated sequences need 2 <= half <= {(adapter.n_ctx - start) // 2} "
                                f"(n_ctx={adapter.n_ctx}), got half={half}")
    tokens = induction_tokens(batch, half, adapter.vocab_size, bos_token_id=adapter.bos_token_id, seed=seed,
                              exclude=(adapter.pad_token_id,))  # [batch, start + 2 half]
    patterns = adapter.attention_patterns(tokens).double().cpu()  # [layers, batch, heads, query, key]
    # query start + half + j: its earlier copy is key start + j (offset half), the token after it start + j + 1
    return _head_frame(adapter.n_layers, adapter.n_heads,
                       previous_token=_offset_mean(patterns, 1, start + 1),
                       duplicate_token=_offset_mean(patterns, half, start + half),
                       induction=_offset_mean(patterns, half - 1, start + half))


def _bias(weights: dict, key: str, heads: int, d_head: int) -> torch.Tensor:
    """A per-head bias [heads, d_head]; zeros for a model without it (Llama)."""
    return weights[key] if key in weights else torch.zeros(heads, d_head, dtype=torch.float64)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of queries or keys x [..., d_head] with cos, sin [..., rotary_dim] (HF rotate_half:
    the first rotary_dim dims, halves paired); the other dims pass through."""
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half = torch.cat([-rot[..., r // 2:], rot[..., :r // 2]], dim=-1)
    return torch.cat([rot * cos + half * sin, rest], dim=-1)


def _analysis_weights(adapter) -> dict[str, torch.Tensor]:
    """float64 weights; a one-line error when the model has no unembedding to read names through."""
    weights = {k: v.double() for k, v in adapter.weights().items()}
    if "W_U" not in weights:
        raise UniversalityError(f"{adapter.name} has no unembedding (its checkpoint holds the base model only); "
                                "head roles read names through it: load a checkpoint with its LM head")
    return weights


def _check_prompts(adapter, prompts: IOIPrompts) -> None:
    if not isinstance(prompts, IOIPrompts):
        raise UniversalityError(f"prompts must be tasks.IOIPrompts (IOITask.prompts), got {type(prompts).__name__}")
    top = int(torch.cat([prompts.io, prompts.s]).max())
    if top >= adapter.vocab_size:
        raise UniversalityError(f"{adapter.name} has {adapter.vocab_size} tokens, the IOI names reach id {top}; "
                                "build the task from the language the model was trained on")


@torch.no_grad()
def name_mover_scores(adapter, prompts: IOIPrompts) -> pd.DataFrame:
    """attn_io, attn_s1, attn_s2, copy and negative_copy per head on `prompts` (module docstring)."""
    _check_prompts(adapter, prompts)
    rows, end = torch.arange(len(prompts)), prompts.end
    patterns = adapter.attention_patterns(prompts.clean).double().cpu()  # [layers, batch, heads, query, key]
    final = patterns[:, :, :, end, :]  # [layers, batch, heads, key]
    # advanced indices (rows, position) move to the front: [batch, layers, heads]
    attn = {f"attn_{name}": final[:, rows, :, pos].mean(dim=0)
            for name, pos in (("io", prompts.io_pos), ("s1", prompts.s1_pos), ("s2", prompts.s2_pos))}
    # OV readout of the residual at IO's position, ranked among the prompts' names
    weights = _analysis_weights(adapter)
    names = torch.cat([prompts.io, prompts.s]).unique()  # [names]
    target = torch.searchsorted(names, prompts.io)  # [batch], IO's index among names
    _, resid = run_components(adapter, prompts.clean, [f"blocks.{l}.hook_resid_pre" for l in range(adapter.n_layers)])
    unembed = weights["ln_final.w"][:, None] * weights["W_U"][:, names]  # [d_model, names]
    centre = "ln_final.b" in weights  # a final LayerNorm removes the mean; an RMSNorm does not
    copy, negative = [], []
    for l in range(adapter.n_layers):
        x = apply_norm(resid[f"blocks.{l}.hook_resid_pre"].double().cpu()[rows, prompts.io_pos],
                  weights, f"blocks.{l}.ln1", adapter.norm_eps)  # [batch, d_model]
        v = torch.einsum("bd,hde->bhe", x, weights[f"blocks.{l}.attn.W_V"]) \
            + _bias(weights, f"blocks.{l}.attn.b_V", adapter.n_heads, adapter.d_head)  # [batch, heads, d_head]
        out = torch.einsum("bhe,hed->bhd", v, weights[f"blocks.{l}.attn.W_O"])  # [batch, heads, d_model]
        logits = ((out - out.mean(dim=-1, keepdim=True)) if centre else out) @ unembed  # [batch, heads, names]
        own = logits.gather(-1, target[:, None, None].expand(-1, logits.shape[1], 1)).squeeze(-1)  # [batch, heads]
        is_io = torch.zeros(logits.shape, dtype=torch.bool)
        is_io[rows, :, target] = True
        # strictly first / last: a head writing nothing (all logits tied) copies nothing
        copy.append((own > logits.masked_fill(is_io, -math.inf).amax(dim=-1)).double().mean(dim=0))  # [heads]
        negative.append((own < logits.masked_fill(is_io, math.inf).amin(dim=-1)).double().mean(dim=0))
    return _head_frame(adapter.n_layers, adapter.n_heads, **attn, copy=torch.stack(copy),
                       negative_copy=torch.stack(negative))


@torch.no_grad()
def s_inhibition_scores(adapter, prompts: IOIPrompts, receivers: list[tuple[int, int]]) -> pd.DataFrame:
    """s_inhibition per head (module docstring) towards the name movers `receivers` [(layer, head)].

    1. clean pass: each receiver layer's residual (its keys and the query's base); every head's z, clean and corrupted;
    2. per receiver: its attention difference d = attn(end -> IO) - attn(end -> S1) - attn(end -> S2), from
       the clean query;
    3. per sender in an earlier layer: d again with the sender's output at the final position,
       (z_corrupt - z_clean) W_O, added to the receiver's query input only;
    4. s_inhibition = sum over receivers (d_clean - d_patched) / sum over receivers |d_clean|."""
    _check_prompts(adapter, prompts)
    check_components(adapter)
    layers, heads, d_head = adapter.n_layers, adapter.n_heads, adapter.d_head
    drops, bases = torch.zeros(layers, heads, dtype=torch.float64), torch.zeros(layers, heads, dtype=torch.float64)
    if receivers:
        rows, end = torch.arange(len(prompts)), prompts.end
        weights = _analysis_weights(adapter)
        positions = torch.arange(prompts.clean.shape[1])
        rotary = adapter.rotary(positions)  # (cos, sin) [pos, rotary_dim] or None
        zs = [z_site(l) for l in range(layers)]
        resid_names = sorted({f"blocks.{l}.hook_resid_pre" for l, _ in receivers})
        _, clean = run_components(adapter, prompts.clean, zs + resid_names)
        _, corrupt = run_components(adapter, prompts.corrupt, zs)
        for layer, head in receivers:
            prefix = f"blocks.{layer}."
            x = clean[prefix + "hook_resid_pre"].double().cpu()  # [batch, pos, d_model]
            w_q, w_k = weights[prefix + "attn.W_Q"][head], weights[prefix + "attn.W_K"][head]  # [d_model, d_head]
            b_q, b_k = (_bias(weights, prefix + f"attn.b_{part}", heads, d_head)[head] for part in "QK")  # [d_head]
            keys = apply_norm(x, weights, prefix + "ln1", adapter.norm_eps) @ w_k + b_k  # [batch, pos, d_head]
            keys = keys if rotary is None else _rotate(keys, *rotary)
            scale = adapter.attention_scale(layer)

            def difference(query_input: torch.Tensor) -> torch.Tensor:  # [batch, d_model] -> [batch]
                q = apply_norm(query_input, weights, prefix + "ln1", adapter.norm_eps) @ w_q + b_q  # [batch, d_head]
                q = q if rotary is None else _rotate(q, rotary[0][end], rotary[1][end])
                attn = (torch.einsum("be,bpe->bp", q, keys) * scale).softmax(dim=-1)  # [batch, pos]
                return attn[rows, prompts.io_pos] - attn[rows, prompts.s1_pos] - attn[rows, prompts.s2_pos]
            base = float(difference(x[:, end]).mean())
            for sender in range(layer):
                delta = (corrupt[zs[sender]] - clean[zs[sender]]).double().cpu()[:, end]  # [batch, heads * d_head]
                delta = delta.view(-1, heads, d_head)  # [batch, heads, d_head]
                for h in range(heads):
                    out = delta[:, h] @ weights[f"blocks.{sender}.attn.W_O"][h]  # [batch, d_model]
                    drops[sender, h] += base - float(difference(x[:, end] + out).mean())
                    bases[sender, h] += abs(base)
    score = torch.where(bases > 0, drops / bases.clamp(min=1e-12), torch.full_like(drops, float("nan")))
    return _head_frame(layers, heads, s_inhibition=score)


def head_role_scores(adapter, prompts: IOIPrompts, *, thresholds: RoleThresholds = RoleThresholds(),
                     seed: int = 0, batch: int = 32) -> pd.DataFrame:
    """Every score of the module docstring per head: columns layer, head, previous_token, duplicate_token,
    induction, attn_io, attn_s1, attn_s2, copy, negative_copy, s_inhibition (towards the heads that
    pass the name-mover thresholds). `seed` and `batch` set the repeated random sequences."""
    scores = repeated_sequence_scores(adapter, batch=batch, seed=seed).merge(
        name_mover_scores(adapter, prompts), on=["layer", "head"])
    movers = scores[(scores["attn_io"] >= thresholds.attention) & (scores["copy"] >= thresholds.copy)]
    receivers = list(zip(movers["layer"].astype(int), movers["head"].astype(int)))
    return scores.merge(s_inhibition_scores(adapter, prompts, receivers), on=["layer", "head"])


def classify_heads(scores: pd.DataFrame, thresholds: RoleThresholds = RoleThresholds()) -> pd.DataFrame:
    """Roles of each head from `head_role_scores` (module docstring): columns role, layer, head, score,
    one row per (head, role) held, ordered by role (as in ROLES) and score, highest first."""
    t = asdict(thresholds)
    rules = {
        "previous_token": (scores["previous_token"] >= t["previous_token"], scores["previous_token"]),
        "duplicate_token": (scores["duplicate_token"] >= t["duplicate_token"], scores["duplicate_token"]),
        "induction": (scores["induction"] >= t["induction"], scores["induction"]),
        "s_inhibition": (scores["s_inhibition"] >= t["s_inhibition"], scores["s_inhibition"]),
        "name_mover": ((scores["attn_io"] >= t["attention"]) & (scores["copy"] >= t["copy"]),
                       scores["attn_io"] * scores["copy"]),
        "negative_name_mover": ((scores["attn_io"] >= t["attention"]) & (scores["negative_copy"] >= t["copy"]),
                                scores["attn_io"] * scores["negative_copy"]),
    }
    parts = []
    for role in ROLES:
        held, value = rules[role]
        part = pd.DataFrame({"role": role, "layer": scores["layer"][held], "head": scores["head"][held],
                             "score": value[held]})
        parts.append(part.sort_values("score", ascending=False, kind="stable"))
    return pd.concat(parts, ignore_index=True).astype({"layer": int, "head": int, "score": float})


def heads_with_role(roles: pd.DataFrame, role: str, *, model: str = "the model") -> list[tuple[int, int]]:
    """[(layer, head)] holding `role` in a `classify_heads` table, highest score first; a one-line error for an
    unknown role or a role no head holds."""
    if role not in ROLES:
        raise UniversalityError(f"unknown head role {role!r}; choose one of: {', '.join(ROLES)}")
    held = roles[roles["role"] == role]
    if held.empty:
        present = ", ".join(dict.fromkeys(roles["role"])) or "none"
        raise UniversalityError(f"{model} has no {role} head (roles it has: {present}); lower RoleThresholds or "
                                "train on the task (train.ioi_fraction > 0)")
    return list(zip(held["layer"].astype(int), held["head"].astype(int)))
