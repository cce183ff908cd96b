"""Attention heads across seeds: what each head attends to, and which head of another model is its twin.

| function                       | input                                       | returns                          |
|--------------------------------|---------------------------------------------|----------------------------------|
| `pattern_scores(patterns)`     | patterns [layers, batch, heads, query, key] | per head: prev_token, bos_sink, ... |
| `head_scores(adapter, tokens)` | an adapter and tokens [batch, pos]          | the above plus induction         |
| `induction_tokens(...)`        | sizes, vocab, seed                          | [batch, 1 + 2 half]: BOS, r, r   |
| `head_correlations(a, b)`      | patterns of two models on the same tokens   | Pearson r [heads_a, heads_b]     |
| `match_heads(a, b)`            | the same                                    | per head of a: best, Hungarian |

Heads are numbered layer-major (flat index = layer * heads + head). Scores (all in [0, 1]):
- `prev_token`: mean attention from query q to key q - 1, over queries q >= 2 (q = 1 would be
  attention to BOS, which `bos_sink` measures);
- `bos_sink`: mean attention from query q to key 0, over queries q >= 1;
- `positional`: max over offsets d >= 0 of the mean attention from q to q - d, over queries whose
  key q - d >= 1 (not BOS): how much of the pattern sits on one fixed relative offset (`positional_offset` = d;
  d = 1 is a previous-token head, d = 0 a self head); encoders' negative offsets are not scored;
- `induction`: on tokens [BOS, r_1..r_n, r_1..r_n] (r uniform random), mean attention from each position
  i of the second half to i - n + 1 (the token after the earlier copy of the current one).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment

from ..errors import UniversalityError

__all__ = ["pattern_scores", "head_scores", "induction_tokens", "head_correlations", "match_heads"]


def _check_patterns(patterns: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(patterns, torch.Tensor) or patterns.ndim != 5 or patterns.shape[-1] != patterns.shape[-2]:
        got = list(patterns.shape) if isinstance(patterns, torch.Tensor) else type(patterns).__name__
        raise UniversalityError(f"{name} must be attention patterns [layers, batch, heads, query, key] "
                                f"(adapter.attention_patterns(tokens)), got {got}")
    return patterns.double().cpu()


def _offset_mean(patterns: torch.Tensor, offset: int, first_query: int) -> torch.Tensor:
    """[layers, heads]: mean of pattern[q, q - offset] over rows and queries q >= first_query."""
    # [layers, batch, heads, pos - offset]: entry i is query q = offset + i, key i
    diagonal = patterns.diagonal(offset=-offset, dim1=-2, dim2=-1)
    return diagonal[..., first_query - offset:].mean(dim=(1, 3))


def pattern_scores(patterns: torch.Tensor) -> pd.DataFrame:
    """prev_token, bos_sink, positional and positional_offset per head (module docstring) of
    patterns [layers, batch, heads, query, key]. Columns: layer, head and those four.

    >>> prev = torch.zeros(1, 1, 1, 4, 4)
    >>> prev[..., 0, 0] = 1; prev[..., [1, 2, 3], [0, 1, 2]] = 1
    >>> pattern_scores(prev)[["prev_token", "bos_sink", "positional_offset"]].values.tolist()
    [[1.0, 0.3333333333333333, 1.0]]
    """
    patterns = _check_patterns(patterns, "patterns")
    layers, _, heads, pos, _ = patterns.shape
    if pos < 3:
        raise UniversalityError(f"head scores need at least 3 positions (BOS, then two tokens), got {pos}")
    # 1) previous token and BOS sink
    prev = _offset_mean(patterns, 1, 2)  # [layers, heads]
    bos = patterns[..., 1:, 0].mean(dim=(1, 3))  # [layers, heads]
    # 2) the mean attention on each offset d (keys >= 1), and the offset holding the most
    per_offset = torch.stack([_offset_mean(patterns, d, d + 1) for d in range(pos - 1)])  # [offsets, layers, heads]
    positional, offset = per_offset.max(dim=0)
    return pd.DataFrame({"layer": np.repeat(np.arange(layers), heads), "head": np.tile(np.arange(heads), layers),
                         "prev_token": prev.reshape(-1).numpy(), "bos_sink": bos.reshape(-1).numpy(),
                         "positional": positional.reshape(-1).numpy(), "positional_offset": offset.reshape(-1).numpy()})


def induction_tokens(batch: int, half: int, vocab_size: int, *, bos_token_id: int | None, seed: int,
                     exclude: tuple[int, ...] = ()) -> torch.Tensor:
    """[batch, 1 + 2 half] (or [batch, 2 half] without BOS): BOS, then r_1..r_half twice, r drawn
    uniformly (with `seed`) from the vocabulary minus BOS and `exclude`."""
    allowed = torch.tensor([t for t in range(vocab_size) if t != bos_token_id and t not in exclude])
    if half < 1 or len(allowed) == 0:
        raise UniversalityError(f"induction tokens need half >= 1 and a token to draw, got half={half}, "
                                f"{len(allowed)} tokens allowed")
    generator = torch.Generator().manual_seed(seed)
    random = allowed[torch.randint(len(allowed), (batch, half), generator=generator)]  # [batch, half]
    parts = [random, random] if bos_token_id is None else [torch.full((batch, 1), bos_token_id), random, random]
    return torch.cat(parts, dim=1)


def head_scores(adapter, tokens: torch.Tensor, *, seed: int = 0) -> pd.DataFrame:
    """`pattern_scores` on tokens [batch, pos] plus `induction` on `induction_tokens` of the same batch
    size and at most the same length (seeded by `seed`). Columns: layer, head, prev_token, bos_sink,
    positional, positional_offset, induction."""
    out = pattern_scores(adapter.attention_patterns(tokens))
    start = 0 if adapter.bos_token_id is None else 1
    half = (min(tokens.shape[1], adapter.n_ctx) - start) // 2
    repeated = induction_tokens(tokens.shape[0], half, adapter.vocab_size, bos_token_id=adapter.bos_token_id,
                                seed=seed, exclude=(adapter.pad_token_id,))
    patterns = _check_patterns(adapter.attention_patterns(repeated), "patterns")
    # query i = start + half + j attends to key start + j + 1: the diagonal at offset half - 1
    induction = _offset_mean(patterns, half - 1, start + half)  # [layers, heads]
    out["induction"] = induction.reshape(-1).numpy()
    return out


def head_correlations(patterns_a: torch.Tensor, patterns_b: torch.Tensor) -> np.ndarray:
    """Pearson r [heads_a, heads_b] (layer-major) between flattened patterns [batch, query, key] of every
    head of a and every head of b on the same tokens.

    Entries equal in every head of both models (causally masked keys, query 0) are left out: they are
    the same for any pair of heads and would only pull every correlation towards 1. A constant head
    has NaN correlations.
    """
    a, b = _check_patterns(patterns_a, "patterns_a"), _check_patterns(patterns_b, "patterns_b")
    if a.shape[1] != b.shape[1] or a.shape[3:] != b.shape[3:]:
        raise UniversalityError(f"patterns_a {list(a.shape)} and patterns_b {list(b.shape)} differ in batch or "
                                "positions; compute both on the same tokens")
    # 1) one row per head: [layers * heads, batch * query * key]
    rows_a = a.permute(0, 2, 1, 3, 4).reshape(a.shape[0] * a.shape[2], -1)
    rows_b = b.permute(0, 2, 1, 3, 4).reshape(b.shape[0] * b.shape[2], -1)
    # 2) drop the entries every head shares
    both = torch.cat([rows_a, rows_b])  # [heads_a + heads_b, entries]
    varying = both.amax(dim=0) > both.amin(dim=0)  # [entries]
    rows_a, rows_b = rows_a[:, varying], rows_b[:, varying]
    # 3) Pearson r of centred, normalised rows
    rows_a = rows_a - rows_a.mean(dim=1, keepdim=True)
    rows_b = rows_b - rows_b.mean(dim=1, keepdim=True)
    rows_a = rows_a / rows_a.norm(dim=1, keepdim=True)
    rows_b = rows_b / rows_b.norm(dim=1, keepdim=True)
    return (rows_a @ rows_b.T).numpy()


def match_heads(patterns_a: torch.Tensor, patterns_b: torch.Tensor) -> pd.DataFrame:
    """For every head of model a, its best partner in model b by pattern correlation
    (`head_correlations`): `best_*` by the max over b's heads, `matched_*` by a one-to-one
    (Hungarian, `scipy.optimize.linear_sum_assignment`) matching maximising the summed correlation
    (NaN correlations count as -1 there). Columns: layer, head, best_layer, best_head, best_corr,
    matched_layer, matched_head, matched_corr (matched_* are -1 / NaN for a's heads left unmatched
    when a has more heads than b).
    """
    corr = head_correlations(patterns_a, patterns_b)  # [heads_a, heads_b]
    heads_a, heads_b = patterns_a.shape[2], patterns_b.shape[2]
    filled = np.nan_to_num(corr, nan=-1.0)
    best = filled.argmax(axis=1)  # [heads_a]
    rows, cols = linear_sum_assignment(-filled)
    matched = np.full(corr.shape[0], -1)
    matched[rows] = cols
    index = np.arange(corr.shape[0])
    matched_corr = np.where(matched >= 0, corr[index, np.maximum(matched, 0)], np.nan)
    return pd.DataFrame({"layer": index // heads_a, "head": index % heads_a,
                         "best_layer": best // heads_b, "best_head": best % heads_b, "best_corr": corr[index, best],
                         "matched_layer": np.where(matched >= 0, matched // heads_b, -1),
                         "matched_head": np.where(matched >= 0, matched % heads_b, -1),
                         "matched_corr": matched_corr})
