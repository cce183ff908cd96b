"""Moment states as plain numpy arrays, what a worker sends through Ray's object store (never a torch
tensor on a device), and the driver's merge of a pass's shard states.

Array names follow `moments/_io` (`save_moments`):

| name                       | shape / dtype                | meaning                          |
|----------------------------|------------------------------|----------------------------------|
| `count`                    | int64 []                     | tokens seen                      |
| `batches`                  | int64 []                     | batches seen                     |
| `mean/<model>`             | float64 [units_m]            | mean activation                  |
| `block/<rows>/<columns>`   | state dtype [rows, columns]  | co-moment block (`Block.name`)   |
| `top/<key>`                | as `TopActivations.state_dict` | top activations (pass 0 of a run) |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

from ..moments import Block, MomentAccumulator, TopActivations

__all__ = ["state_arrays", "accumulator_from_arrays", "top_from_arrays", "merge_tree"]

_TOP = "top/"
Mergeable = TypeVar("Mergeable", MomentAccumulator, TopActivations)


def state_arrays(acc: MomentAccumulator, top: TopActivations | None = None) -> dict[str, np.ndarray]:
    """`acc`'s state (and `top`'s, when given) as host numpy arrays named as in the module docstring;
    `acc`'s deferred checks are read first (`MomentAccumulator.check`)."""
    acc.check()
    arrays = {"count": np.asarray(acc.count_, dtype=np.int64), "batches": np.asarray(acc.batches_, dtype=np.int64)}
    arrays |= {f"mean/{m}": value.cpu().numpy() for m, value in acc.mean_.items()}
    arrays |= {f"block/{block.name}": value.cpu().numpy() for block, value in acc.blocks_.items()}
    if top is not None:
        arrays |= {f"{_TOP}{name}": value.numpy() for name, value in top.state_dict().items()}
    return arrays


def accumulator_from_arrays(arrays: dict[str, np.ndarray], layout: dict, *, dtype: str,
                            blocks: Sequence[Block] | None, device: str = "cpu") -> MomentAccumulator:
    """The accumulator `state_arrays` described: `layout`, `dtype` and `blocks` (None: the default
    blocks) as it was created with. Every array is copied (the object store's are read-only)."""
    acc = MomentAccumulator(layout, dtype=dtype, device="meta", blocks=None if blocks is None else list(blocks))
    acc.device = device
    acc.count_, acc.batches_ = int(arrays["count"]), int(arrays["batches"])
    acc.mean_ = {m: _tensor(arrays[f"mean/{m}"], device) for m in acc.models}
    acc.blocks_ = {block: _tensor(arrays[f"block/{block.name}"], device) for block in acc.blocks_}
    return acc


def top_from_arrays(arrays: dict[str, np.ndarray], layout: dict) -> TopActivations:
    """The `TopActivations` that `state_arrays(acc, top)` carried beside the moments."""
    state = {name[len(_TOP):]: torch.from_numpy(np.array(value)) for name, value in arrays.items()
             if name.startswith(_TOP)}
    return TopActivations.from_state_dict(state, layout)


def merge_tree(states: Sequence[Mergeable]) -> Mergeable:
    """One state from the shard states of a pass, merged pairwise in a balanced tree in shard order
    (Chan's update for moments; exact and associative, so the order only changes rounding, and a fixed
    order makes a run repeatable). Depth log2(shards); `states` must be non-empty. Moment states merge
    in place (`MomentAccumulator.merge`): the first of each pair receives, so `states` are consumed."""
    level = list(states)
    while len(level) > 1:
        level = [level[i].merge(level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    return level[0]


def _tensor(array: np.ndarray, device: str) -> torch.Tensor:
    """A writable torch copy of `array` on `device`."""
    return torch.from_numpy(np.array(array)).to(device)
