"""Which latents of two SAEs are the same, read from their weights: each latent's max cosine
similarity (MCS) to the other dictionary, and the one-to-one (Hungarian) assignment of decoder
directions maximising the summed cosine, optionally confirmed by the encoders.

`match(decoder_a, decoder_b)` returns one row per latent of a:

| column              | meaning                                                                        |
|---------------------|--------------------------------------------------------------------------------|
| `latent`            | the latent's index in a                                                        |
| `mcs`               | max over b's latents j of cos(decoder_a[latent], decoder_b[j]) (NaN: dead)     |
| `partner`           | that j (-1: none)                                                              |
| `hungarian_partner` | its partner in the one-to-one assignment (-1: none, e.g. left over when a is wider) |
| `hungarian_cos`     | the cosine with it (NaN: none)                                                 |
| `shared`            | `hungarian_cos >= threshold`; with encoders, also `hungarian_partner_enc ==`   |
|                     | `hungarian_partner` and `hungarian_cos_enc >= threshold`                       |
| `mcs_enc`           | with encoders only: `mcs`, `hungarian_partner`, `hungarian_cos` read from the  |
| `hungarian_partner_enc`, `hungarian_cos_enc` | encoder rows (W_enc [latents, d_in]) instead          |

and in `DataFrame.attrs`: `level` ("direct"), `matching` ("hungarian" or "sparse top-k=16"),
`threshold`, `latents_a`, `latents_b`, `d_in`, `coverage_a` / `coverage_b` (share of a's / b's
latents whose MCS to the other dictionary is >= threshold) and `left_unmatched` (live latents of the
narrower side the sparse graph could not match; 0 on the dense path).

Cosines are signed (an SAE latent has a direction and a sign). A zero decoder row has no direction:
that latent is dead, with NaN MCS and no partner, and is never assigned.

Paths: up to `dense_limit` latents on both sides, the float64 [latents_a, latents_b] cosine matrix
and `scipy.optimize.linear_sum_assignment` (rectangular: every latent of the narrower side matched).
Wider, a sparse candidate graph (`universality._one_to_one`): each latent's `candidates` best partners
from both sides, found on float32 tiles of about 2^24 cosines so no [latents_a, latents_b] matrix is
held, every edge rescored in float64; MCS and partner are the best rescored edge of each row (exact:
a row's best partner is among its own candidates), and the assignment is
`min_weight_full_bipartite_matching` on weights cos + 2, exact on that graph. When the graph holds no
matching of every live latent of the narrower side, the matching is solved again with each latent of
that side given a private dummy partner scored as cos -1 (the lowest a cosine can be), so a full
matching exists; latents matched to their dummy come back unmatched (`left_unmatched`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment

from .._one_to_one import CANDIDATES, DENSE_LIMIT, candidate_edges, graph_assignment
from ..errors import UniversalityError, short_repr

__all__ = ["match", "width_coverage", "as_matrix", "MATCH_COLUMNS", "DENSE_LIMIT", "CANDIDATES"]

MATCH_COLUMNS = ["latent", "mcs", "partner", "hungarian_partner", "hungarian_cos", "shared"]
ENCODER_COLUMNS = ["mcs_enc", "hungarian_partner_enc", "hungarian_cos_enc"]
_RESCORE = 2**14  # candidate edges rescored in float64 at a time (two [edges, d_in] gathers, ~64 MB each at 512)


def match(decoder_a, decoder_b, *, threshold: float = 0.7, encoder_a=None, encoder_b=None,
          dense_limit: int = DENSE_LIMIT, candidates: int = CANDIDATES) -> pd.DataFrame:
    """One row per latent of a: MCS, best partner, Hungarian partner and cosine, shared (module docstring).

    decoder_a : Tensor [latents_a, d_in]; decoder_b : Tensor [latents_b, d_in] (rows normalised here)
    threshold : float in [-1, 1], default 0.7; the cosine a shared latent's assignment needs
    encoder_a, encoder_b : Tensor [latents, d_in] each, or both None (default); with them, a latent is
        shared only when the encoders' assignment gives it the same partner, also at >= threshold
    dense_limit : int, default 20000; above this many latents on either side, the sparse path
    candidates : int, default 16; candidate partners per latent, from each side, on the sparse path

    >>> d = torch.eye(3)
    >>> match(d, d[[2, 0, 1]])[["latent", "partner", "hungarian_partner", "shared"]].values.tolist()
    [[0, 1, 1, True], [1, 2, 2, True], [2, 0, 0, True]]
    """
    check_settings(threshold, dense_limit, candidates)
    a, b = as_matrix(decoder_a, "decoder_a"), as_matrix(decoder_b, "decoder_b")
    _same_space(a, "decoder_a", b, "decoder_b")
    if (encoder_a is None) != (encoder_b is None):
        raise UniversalityError("give both encoder_a and encoder_b, or neither: shared then needs the encoders' "
                                "assignment to agree with the decoders'")
    decoders = _geometry(a, b, dense_limit=dense_limit, candidates=candidates)
    table = {"latent": np.arange(len(a)), "mcs": decoders.mcs_a, "partner": decoders.partner_a,
             "hungarian_partner": decoders.assigned_a, "hungarian_cos": decoders.assigned_cos_a,
             "shared": decoders.assigned_cos_a >= threshold}  # NaN (none) compares False
    if encoder_a is not None:
        encoders = _geometry(as_matrix(encoder_a, "encoder_a", shape=a.shape),
                             as_matrix(encoder_b, "encoder_b", shape=b.shape),
                             dense_limit=dense_limit, candidates=candidates)
        table.update(mcs_enc=encoders.mcs_a, hungarian_partner_enc=encoders.assigned_a,
                     hungarian_cos_enc=encoders.assigned_cos_a)
        table["shared"] = (table["shared"] & (encoders.assigned_a == decoders.assigned_a)
                           & (encoders.assigned_cos_a >= threshold))
    frame = pd.DataFrame(table)
    frame.attrs.update(level="direct", matching=decoders.matching, threshold=float(threshold),
                       latents_a=len(a), latents_b=len(b), d_in=a.shape[1],
                       coverage_a=float(np.mean(decoders.mcs_a >= threshold)),
                       coverage_b=float(np.mean(decoders.mcs_b >= threshold)),
                       left_unmatched=decoders.left_unmatched)
    return frame


def width_coverage(decoder_small, decoder_large, threshold: float = 0.7, *, dense_limit: int = DENSE_LIMIT,
                   candidates: int = CANDIDATES) -> tuple[float, float]:
    """(share of the small dictionary's latents whose MCS to the large one is >= threshold, share of
    the large one's latents whose MCS to the small one is >= threshold); dead latents count as not
    covered. Decoders [latents, d_in] of one space; the same MCS as `match`'s (no assignment).

    >>> width_coverage(torch.eye(4)[:2], torch.eye(4))
    (1.0, 0.5)
    """
    check_settings(threshold, dense_limit, candidates)
    small, large = as_matrix(decoder_small, "decoder_small"), as_matrix(decoder_large, "decoder_large")
    _same_space(small, "decoder_small", large, "decoder_large")
    found = _geometry(small, large, dense_limit=dense_limit, candidates=candidates, assign=False)
    return float(np.mean(found.mcs_a >= threshold)), float(np.mean(found.mcs_b >= threshold))


def check_settings(threshold, dense_limit, candidates) -> None:
    """Raise `UniversalityError` (one line) unless threshold is a number in [-1, 1] and dense_limit,
    candidates are integers >= 1."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not -1 <= threshold <= 1:
        raise UniversalityError(f"threshold must be a cosine in [-1, 1], got {short_repr(threshold)}; e.g. "
                                "threshold=0.7")
    for name, value, default in (("dense_limit", dense_limit, DENSE_LIMIT), ("candidates", candidates, CANDIDATES)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise UniversalityError(f"{name} must be an integer >= 1, got {short_repr(value)}; e.g. {name}={default}")


def as_matrix(x, name: str, *, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """`x` (a tensor or array) as a float64 [rows, d_in] tensor, checked: two dimensions, both > 0,
    finite values, and `shape` when given; else `UniversalityError` in one line."""
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise UniversalityError(f"{name} must be a tensor [latents, d_in], got {short_repr(x)}") from None
    if t.ndim != 2 or 0 in t.shape:
        raise UniversalityError(f"{name} must be [latents, d_in] with both > 0, got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise UniversalityError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise UniversalityError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)} like its decoder "
                                "([latents, d_in], one row per latent)")
    t = t.detach().to("cpu", torch.float64)
    finite = torch.isfinite(t).all(dim=1)
    if not bool(finite.all()):
        raise UniversalityError(f"{name} has NaN or infinite values (first in latent {int((~finite).nonzero()[0])});"
                                " fix or drop those latents before matching")
    return t


def _same_space(a: torch.Tensor, name_a: str, b: torch.Tensor, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise UniversalityError(f"{name_a} has d_in {a.shape[1]} but {name_b} has {b.shape[1]}: directions of spaces "
                                "of different width do not compare; match SAEs of one space, or compare latent "
                                "activations (functional level)")


@dataclass
class _Geometry:
    """MCS both ways and the one-to-one assignment between rows of a and rows of b."""

    mcs_a: np.ndarray  # [latents_a] max cosine to b (NaN: dead, or b all dead)
    partner_a: np.ndarray  # [latents_a] its argmax in b (-1: none)
    mcs_b: np.ndarray  # [latents_b] max cosine to a
    assigned_a: np.ndarray  # [latents_a] Hungarian partner in b (-1: none)
    assigned_cos_a: np.ndarray  # [latents_a] its cosine (NaN: none)
    matching: str  # "hungarian" or "sparse top-k=<candidates>"
    left_unmatched: int  # live latents of the narrower side the sparse graph left unmatched


def _geometry(a: torch.Tensor, b: torch.Tensor, *, dense_limit: int, candidates: int,
              assign: bool = True) -> _Geometry:
    """MCS and (when `assign`) the assignment of float64 rows a [latents_a, d] against b [latents_b, d]."""
    norm_a, norm_b = a.norm(dim=1), b.norm(dim=1)
    live_a, live_b = torch.nonzero(norm_a > 0).squeeze(1), torch.nonzero(norm_b > 0).squeeze(1)  # dead: zero rows
    unit_a, unit_b = a[live_a] / norm_a[live_a, None], b[live_b] / norm_b[live_b, None]  # [live, d] each
    live_a, live_b = live_a.numpy(), live_b.numpy()
    sparse = max(len(a), len(b)) > dense_limit  # the SAEs' widths choose the path, whatever is dead
    found = _Geometry(np.full(len(a), np.nan), np.full(len(a), -1), np.full(len(b), np.nan), np.full(len(a), -1),
                      np.full(len(a), np.nan), f"sparse top-k={candidates}" if sparse else "hungarian", 0)
    if not len(live_a) or not len(live_b):
        return found
    if not sparse:
        cos = (unit_a @ unit_b.T).numpy()  # float64 [live_a, live_b]
        best_a, best_b = cos.argmax(axis=1), cos.argmax(axis=0)
        found.mcs_a[live_a], found.partner_a[live_a] = cos[np.arange(len(cos)), best_a], live_b[best_a]
        found.mcs_b[live_b] = cos[best_b, np.arange(cos.shape[1])]
        if assign:
            i, j = linear_sum_assignment(cos, maximize=True)
            found.assigned_a[live_a[i]], found.assigned_cos_a[live_a[i]] = live_b[j], cos[i, j]
        return found
    tile_a, tile_b = unit_a.float(), unit_b.float()  # float32 tiles choose candidates; float64 scores them

    def read(rows: slice) -> torch.Tensor:
        return tile_a[rows] @ tile_b.T  # [rows, live_b]
    edges = candidate_edges(read, len(unit_a), len(unit_b), candidates if assign else 1)
    edges = edges._replace(scores=_rescore(unit_a, unit_b, edges.rows, edges.columns))
    row, partner, score = _best_per(edges.rows, edges.columns, edges.scores)
    found.mcs_a[live_a[row]], found.partner_a[live_a[row]] = score, live_b[partner]
    column, _, score = _best_per(edges.columns, edges.rows, edges.scores)
    found.mcs_b[live_b[column]] = score
    if assign:
        i, j, c = graph_assignment(edges, candidates=candidates, unmatched="dummy")
        found.assigned_a[live_a[i]], found.assigned_cos_a[live_a[i]] = live_b[j], c
        found.left_unmatched = min(len(live_a), len(live_b)) - len(i)
    return found


def _rescore(a: torch.Tensor, b: torch.Tensor, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """float64 cos(a[rows[e]], b[columns[e]]) for each edge e, `_RESCORE` edges at a time."""
    out = np.empty(len(rows))
    rows, columns = torch.from_numpy(rows), torch.from_numpy(columns)
    for start in range(0, len(rows), _RESCORE):
        part = slice(start, start + _RESCORE)
        out[part] = (a[rows[part]] * b[columns[part]]).sum(dim=1).numpy()  # [edges in part]
    return out


def _best_per(keys: np.ndarray, others: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct key: the other end of its best-scoring edge (ties: the lowest index, as
    `argmax`) and that score. Returns keys, others, scores [distinct keys]."""
    order = np.lexsort((others, -scores, keys))  # by key, then score descending, then index
    keys = keys[order]
    first = order[np.r_[True, keys[1:] != keys[:-1]]]
    return keys[np.r_[True, keys[1:] != keys[:-1]]], others[first], scores[first]
