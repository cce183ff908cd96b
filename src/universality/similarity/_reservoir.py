"""A seeded uniform sample of token rows, kept during the single pass: every unit set of every model
for the same tokens, for the metrics the moment state cannot give (`_token_metrics`) and the nulls.

Bottom-k sampling: each token gets a key that depends only on (seed, its position in the stream),
splitmix64(position xor splitmix64(seed)), a bijection of the position, so keys never tie; the reservoir
keeps the `size` tokens of smallest key. The sample is therefore a function of which positions were
seen, not of batch sizes or order: shards of a stream merge (`merge`) into exactly the reservoir of
one pass, in any order. A reservoir at least as large as the stream keeps every row.

| name         | shape                        | meaning                                         |
|--------------|------------------------------|-------------------------------------------------|
| `count_`     | int                          | tokens seen                                     |
| `positions_` | int64 [rows]                 | stream positions of the kept tokens, ascending  |
| `rows_`      | {model: {unit_set: [rows, n]}} | their activations (float32), in that order   |

Memory: 4 bytes x size x all units (4096 rows of 5 GPT-2-small seeds: 3.0 GB).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UniversalityError
from ..moments import Layout, normalize_batch

__all__ = ["Reservoir"]

_MASK = (1 << 64) - 1
_PREFIX = "reservoir"  # of the tensors in `state_dict`


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele et al. 2014) on uint64 [n]: a bijection that scrambles every bit."""
    z = values + np.uint64(0x9E3779B97F4A7C15)  # uint64 arrays wrap around: arithmetic mod 2^64
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _keys(positions: np.ndarray, seed: int) -> np.ndarray:
    """uint64 keys [n] of stream positions (int64 [n]) under `seed`: distinct for distinct positions."""
    salt = _splitmix64(np.array([seed & _MASK], dtype=np.uint64))
    return _splitmix64(positions.astype(np.uint64) ^ salt)


class Reservoir:
    """Keeps `size` token rows of a stream, chosen by seeded keys of their positions (module docstring).

    Parameters
    ----------
    layout : {model: {unit_set: units}}
        The structure of every batch, as for `MomentAccumulator`.
    size : int >= 1
        Rows kept; a stream of fewer tokens is kept whole.
    seed : int >= 0, default=0

    >>> import torch
    >>> sample = Reservoir({"a": {"units": 3}, "b": {"units": 2}}, size=4, seed=0)
    >>> sample = sample.update({"a": torch.randn(10, 3), "b": torch.randn(10, 2)})
    >>> sample.count_, sample.rows_["a"]["units"].shape
    (10, torch.Size([4, 3]))
    """

    def __init__(self, layout: Layout, size: int, *, seed: int = 0):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UniversalityError(f"reservoir size must be an integer >= 1 (token rows kept), got {size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UniversalityError(f"seed must be an integer >= 0, got {seed!r}")
        self.layout = {m: dict(sets) for m, sets in layout.items()}
        self.size, self.seed = size, seed
        self.count_ = 0
        self._keys = np.zeros(0, dtype=np.uint64)  # [kept], in storage order
        self._positions = np.zeros(0, dtype=np.int64)  # [kept]
        # {model: {unit_set: float32 [capacity, units]}}; the first len(_keys) rows are kept, in storage order
        self._rows = {m: {s: torch.zeros(0, n) for s, n in sets.items()} for m, sets in self.layout.items()}

    @property
    def positions_(self) -> np.ndarray:
        """Stream positions of the kept rows, ascending, int64 [rows]."""
        return np.sort(self._positions)

    @property
    def rows_(self) -> dict[str, dict[str, torch.Tensor]]:
        """{model: {unit_set: float32 [rows, units]}}: the kept rows in stream order (a copy)."""
        order = torch.from_numpy(np.argsort(self._positions))
        return {m: {s: x[order] for s, x in sets.items()} for m, sets in self._rows.items()}

    def update(self, batch, start: int | None = None) -> "Reservoir":
        """Offer one batch `{model: {unit_set: Tensor[tokens, units]}}` whose first token sits at stream
        position `start` (default: `count_`, for batches given in stream order); returns self."""
        models = normalize_batch(batch, self.layout)
        tokens = next(iter(next(iter(models.values())).values())).shape[0]
        start = self.count_ if start is None else start
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise UniversalityError(f"start must be the stream position (an integer >= 0) of the batch's first token, "
                                    f"got {start!r}")
        positions = np.arange(start, start + tokens, dtype=np.int64)
        if np.isin(positions, self._positions).any():
            raise UniversalityError(f"this reservoir already holds a token at a position in [{start}, "
                                    f"{start + tokens}); give every batch its own stream positions (start=...)")
        keys = _keys(positions, self.seed)
        kept = len(self._keys)
        # 1) Bottom-k of the kept keys and the batch's: which old rows stay, which new rows come in.
        chosen = _smallest(np.concatenate([self._keys, keys]), self.size)
        stay, arrive = chosen[chosen < kept], chosen[chosen >= kept] - kept
        # 2) Arrivals fill the slots of the rows they evict, then the free slots after the kept ones.
        evicted = np.setdiff1d(np.arange(kept), stay)
        slots = np.concatenate([evicted, np.arange(kept, kept + len(arrive) - len(evicted))]).astype(np.int64)
        self._grow(kept + len(arrive) - len(evicted))
        rows, take = torch.from_numpy(slots), torch.from_numpy(arrive.astype(np.int64))
        for m, sets in self._rows.items():
            for s, x in sets.items():
                x[rows] = models[m][s][take].to(torch.float32)
        self._keys = np.concatenate([self._keys, np.zeros(len(slots) - len(evicted), dtype=np.uint64)])
        self._positions = np.concatenate([self._positions, np.zeros(len(slots) - len(evicted), dtype=np.int64)])
        self._keys[slots], self._positions[slots] = keys[arrive], positions[arrive]
        self.count_ += tokens
        return self

    def merge(self, other: "Reservoir") -> "Reservoir":
        """The reservoir of both streams (disjoint positions); a new object, neither input changes. Equal to
        the reservoir of one pass over both, whatever the order of merges."""
        if (other.layout, other.size, other.seed) != (self.layout, self.size, self.seed):
            raise UniversalityError("cannot merge reservoirs of different layouts, sizes or seeds")
        if np.intersect1d(self._positions, other._positions).size:
            raise UniversalityError("cannot merge reservoirs that hold the same stream positions; give each shard "
                                    "its own positions (update(batch, start=...))")
        keys = np.concatenate([self._keys, other._keys])
        chosen = _smallest(keys, self.size)
        merged = Reservoir(self.layout, self.size, seed=self.seed)
        merged.count_ = self.count_ + other.count_
        merged._keys = keys[chosen]
        merged._positions = np.concatenate([self._positions, other._positions])[chosen]
        index = torch.from_numpy(chosen.astype(np.int64))
        kept = len(self._keys), len(other._keys)
        merged._rows = {m: {s: torch.cat([x[:kept[0]], other._rows[m][s][:kept[1]]])[index] for s, x in sets.items()}
                        for m, sets in self._rows.items()}
        return merged

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors, keyed `reservoir.{keys|positions|count|size|seed}` and `reservoir.{i}.{j}.rows`
        (i: model, j: unit set, by layout order; the kept rows [kept, units] in storage order), ready to
        store beside the moments; `from_state_dict` rebuilds the same reservoir."""
        kept = len(self._keys)
        state = {f"{_PREFIX}.keys": torch.from_numpy(self._keys.view(np.int64).copy()),  # uint64 bits as int64
                 f"{_PREFIX}.positions": torch.from_numpy(self._positions.copy()),
                 f"{_PREFIX}.count": torch.tensor([self.count_, self.size, self.seed], dtype=torch.int64)}
        for i, sets in enumerate(self._rows.values()):
            for j, x in enumerate(sets.values()):
                state[f"{_PREFIX}.{i}.{j}.rows"] = x[:kept].clone()
        return state

    @classmethod
    def from_state_dict(cls, state, layout: Layout) -> "Reservoir":
        """The reservoir `state_dict` wrote (other keys in `state` are ignored), for the same `layout`."""
        try:
            count, size, seed = (int(v) for v in state[f"{_PREFIX}.count"])
            sample = cls(layout, size, seed=seed)
            sample.count_ = count
            sample._keys = state[f"{_PREFIX}.keys"].numpy().astype(np.int64).view(np.uint64).copy()
            sample._positions = state[f"{_PREFIX}.positions"].numpy().astype(np.int64).copy()
            for i, (m, sets) in enumerate(sample._rows.items()):
                for j, (s, units) in enumerate(sample.layout[m].items()):
                    rows = state[f"{_PREFIX}.{i}.{j}.rows"]
                    if tuple(rows.shape) != (len(sample._keys), units):
                        raise UniversalityError(f"saved reservoir rows of {m}/{s} have shape {tuple(rows.shape)}, "
                                                f"the layout needs ({len(sample._keys)}, {units})")
                    sets[s] = rows.to(torch.float32).clone()
        except KeyError as missing:
            raise UniversalityError(f"saved reservoir lacks {missing}; recompute it (rerun the stream)") from None
        return sample

    def _grow(self, rows: int) -> None:
        """Room for `rows` kept rows, doubling the capacity (at most `size`) so filling costs O(size) copies."""
        capacity = next(iter(next(iter(self._rows.values())).values())).shape[0]
        if rows <= capacity:
            return
        capacity = min(self.size, max(rows, 2 * capacity))
        for sets in self._rows.values():
            for s, x in sets.items():
                sets[s] = torch.cat([x, x.new_zeros(capacity - len(x), x.shape[1])])


def _smallest(keys: np.ndarray, size: int) -> np.ndarray:
    """Indices of the `size` smallest keys (all of them when there are fewer), ascending."""
    if len(keys) <= size:
        return np.arange(len(keys))
    return np.sort(np.argpartition(keys, size - 1)[:size])
