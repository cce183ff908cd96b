"""One-to-one assignment of rows to columns maximising the summed score, on a dense block or on a
sparse candidate graph: shared by neuron matching (`compare.assign_partners`, Pearson r) and SAE
latent matching (`saes.match`, cosine similarity). Scores lie in [-1, 1]; NaN marks a dead unit.

| function            | in                                             | out                                   |
|---------------------|------------------------------------------------|---------------------------------------|
| `one_to_one`        | `read(slice of rows) -> [rows in slice, cols]` | row, column, score [matched]          |
| `dense_assignment`  | a whole float64 [rows, columns] block          | row, column, score [matched]          |
| `candidate_edges`   | the same `read`, k                             | `Edges`: each row's and column's k best |
| `graph_assignment`  | `Edges`                                        | row, column, score [matched]          |

Dense (both sides <= `dense_limit`): `scipy.optimize.linear_sum_assignment` on the live block, a
matching of every live unit of the narrower side. Sparse: every unit's k best partners from both
sides (row and column top-k, read in row chunks, never a whole [rows, columns] matrix), then
`scipy.sparse.csgraph.min_weight_full_bipartite_matching`. That matching is optimal on the graph,
so equal to the dense one whenever the dense one uses candidate edges only. When the graph holds
no matching of every live unit of the narrower side, `unmatched` decides: "raise" says so in one
line; "dummy" solves again with each unit of the narrower side given a private dummy partner whose
edge scores -1 (the lowest a cosine or r can be), so a full matching exists, and units matched to
their dummy come back unmatched: the real edges kept maximise the summed score with every unmatched
unit counted at -1. (The plain graph is tried first, so where it holds a full matching both settings
give that graph's optimum.)
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_array, diags_array, hstack, vstack
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from .errors import UniversalityError

__all__ = ["one_to_one", "dense_assignment", "candidate_edges", "graph_assignment", "Edges", "DENSE_LIMIT",
           "CANDIDATES", "UNMATCHED"]

DENSE_LIMIT = 20_000  # widest block matched densely: its float64 tile is 3.2 GB and the Hungarian O(n^3)
CANDIDATES = 16  # candidate partners per unit, from each side, on the sparse path
UNMATCHED = ("raise", "dummy")
_CHUNK = 2**24  # score entries read at a time on the sparse path (128 MB float64)
_SHIFT = 2.0  # graph weights are score + 2 > 0: a stored zero would be no edge; every full matching has one size
_DUMMY = _SHIFT - 1.0  # a dummy edge weighs as a score of -1

Read = Callable[[slice], "np.ndarray | torch.Tensor"]


class Edges(NamedTuple):
    """The sparse path's candidate graph: row, column and score of each edge [edges] (no duplicates,
    scores finite), and which rows [rows] and columns [columns] are live (some finite score)."""

    rows: np.ndarray
    columns: np.ndarray
    scores: np.ndarray
    live_rows: np.ndarray
    live_columns: np.ndarray


def one_to_one(read: Read, rows: int, columns: int, *, label: str = "the block", dense_limit: int = DENSE_LIMIT,
               candidates: int = CANDIDATES, unmatched: str = "raise") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The assignment of live rows to live columns maximising the summed score, over a block read by
    `read(slice of rows) -> [rows in the slice, columns]` (NaN rows and columns: dead, never assigned).
    Returns row indices, column indices and their scores (float64), [matched] each.

    >>> score = np.array([[0.1, 0.9], [0.8, 0.7]])
    >>> [x.tolist() for x in one_to_one(lambda rows: score[rows], 2, 2)]
    [[0, 1], [1, 0], [0.9, 0.8]]
    """
    if max(rows, columns) <= dense_limit:
        return dense_assignment(np.asarray(read(slice(0, rows)), dtype=np.float64))
    return graph_assignment(candidate_edges(read, rows, columns, candidates), label=label, candidates=candidates,
                            unmatched=unmatched)


def dense_assignment(score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`one_to_one` on a whole float64 [rows, columns] block held in memory."""
    finite = np.isfinite(score)
    live_rows, live_columns = np.flatnonzero(finite.any(axis=1)), np.flatnonzero(finite.any(axis=0))
    if len(live_rows) < score.shape[0] or len(live_columns) < score.shape[1]:  # a copy only when some unit is dead
        score = score[np.ix_(live_rows, live_columns)]
    i, j = linear_sum_assignment(score, maximize=True)
    return live_rows[i], live_columns[j], score[i, j]


def candidate_edges(read: Read, rows: int, columns: int, k: int) -> Edges:
    """Each live row's k best columns and each live column's k best rows, read in row chunks of
    about `_CHUNK` entries (module docstring). Scores keep the dtype `read` returns."""
    k_row, k_column = min(k, columns), min(k, rows)
    live_rows, live_columns = torch.zeros(rows, dtype=torch.bool), torch.zeros(columns, dtype=torch.bool)
    best = best_row = None  # each column's k_column best scores so far, descending, and their rows [k_column, columns]
    found = []  # per chunk: (row, column, score) of each row's k_row best columns
    chunk = max(1, _CHUNK // columns)
    for start in range(0, rows, chunk):
        tile = torch.as_tensor(read(slice(start, min(start + chunk, rows))))  # [n, columns]
        n = len(tile)
        if math.isfinite(tile.sum()):  # one cheap reduction decides whether any unit is dead
            live_rows[start:start + n], live_columns[:] = True, True
        else:  # a dead unit's NaN entries become -inf: never a candidate
            finite = torch.isfinite(tile)
            live_rows[start:start + n] = finite.any(dim=1)
            live_columns |= finite.any(dim=0)
            tile = tile.masked_fill(~finite, -math.inf)
        if best is None:
            best = torch.full((k_column, columns), -math.inf, dtype=tile.dtype)
            best_row = torch.zeros((k_column, columns), dtype=torch.int64)
        score, top = tile.topk(k_row, dim=1)  # [n, k_row]
        found.append((torch.arange(start, start + n).repeat_interleave(k_row), top.ravel(), score.ravel()))
        _merge_column_best(tile, start, best, best_row)
    found.append((best_row.ravel(), torch.arange(columns).repeat(k_column), best.ravel()))
    row, column, score = (torch.cat(part).numpy() for part in zip(*found))
    finite = np.isfinite(score)  # dead rows and columns gave -inf: no edge
    _, first = np.unique(row[finite] * columns + column[finite], return_index=True)
    return Edges(row[finite][first], column[finite][first], score[finite][first].astype(np.float64),
                 live_rows.numpy(), live_columns.numpy())


def _merge_column_best(tile: torch.Tensor, start: int, best: torch.Tensor, best_row: torch.Tensor) -> None:
    """Fold the rows `start...` of `tile` [n, columns] into each column's best [k, columns], in place.

    Only entries above a column's k-th best so far can enter it. Once a few chunks are in, those are
    few (about k / chunks-so-far per column), so: 1) collect them, grouped by column; 2) lay each
    touched column's k best and its new entries out in one row of a small [touched, k + most new]
    matrix (-inf padding); 3) take its top k. A chunk with many (the first) goes through a dense
    top-k along the rows instead (slower per entry: strided, once or twice).
    """
    k, columns = best.shape
    hit = tile > best[-1]  # [n, columns]
    hits = int(hit.count_nonzero())
    if hits > columns * k:
        score, top = torch.cat([best, tile]).topk(k, dim=0)  # [k, columns]
        rows = torch.cat([best_row, torch.arange(start, start + len(tile)).expand(columns, -1).T])
        best[:], best_row[:] = score, rows.gather(0, top)
        return
    if hits == 0:
        return
    row, column = hit.nonzero(as_tuple=True)  # 1) [hits] each, in row order
    order = torch.from_numpy(column.numpy().argsort(kind="stable"))  # numpy's stable sort: ~4x torch's here
    row, column = row[order], column[order]
    counts = torch.bincount(column, minlength=columns)  # [columns]
    touched = counts.nonzero().squeeze(1)  # [touched]
    place = torch.empty(columns, dtype=torch.int64)
    place[touched] = torch.arange(len(touched))
    slot = k + torch.arange(hits) - (counts.cumsum(0) - counts)[column]  # 2) k + rank among its column's hits
    score = torch.full((len(touched), k + int(counts.max())), -math.inf, dtype=tile.dtype)
    rows = torch.zeros(score.shape, dtype=torch.int64)
    score[:, :k], rows[:, :k] = best[:, touched].T, best_row[:, touched].T
    score[place[column], slot], rows[place[column], slot] = tile[row, column], row + start
    score, top = score.topk(k, dim=1)  # 3) [touched, k]
    best[:, touched], best_row[:, touched] = score.T, rows.gather(1, top).T


def graph_assignment(edges: Edges, *, label: str = "the block", candidates: int = CANDIDATES,
                     unmatched: str = "raise") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The assignment on the candidate graph `edges` maximising the summed score: every live unit of
    the narrower side matched, or, where the graph holds no such matching, as `unmatched` says
    (module docstring). Returns row indices, column indices, scores [matched] each."""
    if unmatched not in UNMATCHED:
        raise UniversalityError(f"unmatched must be one of {', '.join(UNMATCHED)}, got {unmatched!r}")
    empty = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    if not edges.live_rows.any() or not edges.live_columns.any():
        return empty
    # the graph on live units only: a dead unit is no vertex, so "full" means every live unit of the narrower side
    row_id, column_id = np.cumsum(edges.live_rows) - 1, np.cumsum(edges.live_columns) - 1
    shape = int(edges.live_rows.sum()), int(edges.live_columns.sum())
    weight = edges.scores + _SHIFT
    graph = csr_array((weight, (row_id[edges.rows], column_id[edges.columns])), shape=shape)
    try:
        i, j = min_weight_full_bipartite_matching(graph, maximize=True)
    except ValueError:
        if unmatched == "raise":
            raise UniversalityError(f"no one-to-one assignment of every live unit of the narrower side of {label} "
                                    f"exists among each unit's {candidates} best candidates; raise candidates (e.g. "
                                    f"candidates={4 * candidates})") from None
        i, j = _with_dummies(graph)
    score = np.asarray(graph[i, j], dtype=np.float64).ravel() - _SHIFT if len(i) else np.zeros(0)
    return np.flatnonzero(edges.live_rows)[i], np.flatnonzero(edges.live_columns)[j], score


def _with_dummies(graph: csr_array) -> tuple[np.ndarray, np.ndarray]:
    """The maximum-weight matching of `graph` [rows, columns] after giving each vertex of the narrower
    side a private dummy partner at weight `_DUMMY` (module docstring); dummy pairs left out."""
    rows, columns = graph.shape
    if rows <= columns:  # dummy columns columns..columns+rows-1, one per row
        i, j = min_weight_full_bipartite_matching(hstack([graph, diags_array(np.full(rows, _DUMMY))], format="csr"),
                                                  maximize=True)
        real = j < columns
    else:  # dummy rows, one per column
        i, j = min_weight_full_bipartite_matching(vstack([graph, diags_array(np.full(columns, _DUMMY))], format="csr"),
                                                  maximize=True)
        real = i < rows
    return i[real], j[real]
