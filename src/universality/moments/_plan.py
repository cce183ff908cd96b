"""A plan of passes within a memory budget (DESIGN.md, "Scale: blocks, passes, jobs").

The co-moment state is cut into blocks (`Block`): each unit set's Gram, and for every model pair
(a, b) a block per unit set of a by all of b's units (split further at b's unit-set boundaries
when that does not fit). Blocks are cut only at unit-set boundaries, so the rotation baseline of
every unit set is computed from whole unit sets and stays exact. Blocks are grouped into passes
that fit the budget; each pass streams the data again (re-running the models: at GPT-2-small
widths their forward is far cheaper than the cross-moment GEMMs).

Memory of one pass (bytes), the terms `Plan.table` prints:
    resident   = Grams + means (kept through every pass: the baseline needs them)
                 + rotations (dense Haar: float64 Q and a cast per distinct unit-set width and index; fast: O(n))
                 + batch (float32 [tokens + 1, all units] three times: the batch being accumulated, the
                   next one its source builds meanwhile, and the centred copy)
                 + product (one float32 tile of a batch's co-moments before it is added to the state)
                 + reduction (3 x one unit-set pair [n_a, n_b] in the state's dtype)
    pass k     = resident + its cross blocks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._defaults import rotation_kind_for
from ..errors import UniversalityError
from ._accumulator import PRODUCT_TILE, Block, default_blocks, unit_offsets
from ._batches import Layout

__all__ = ["Plan", "plan_passes", "budget_for_passes", "parse_bytes", "available_memory", "DEFAULT_BUDGET_FRACTION"]

DEFAULT_BUDGET_FRACTION = 0.5  # memory_budget = "auto": half of the device's available memory
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_ELEMENT = {"float32": 4, "float64": 8}


@dataclass
class Plan:
    """Which co-moment blocks each pass over the data accumulates, and the memory each pass needs.

    passes : list of list of Block, the first holding every Gram
    resident : {term: bytes} held through every pass (see the module docstring)
    budget : bytes or None (None: one pass holding everything)
    """
    layout: dict
    passes: list
    resident: dict
    budget: int | None
    dtype: str
    batch_tokens: int
    rotations: int = 1
    rotation: str = "auto"

    @property
    def reduction_flop(self) -> float:
        """FLOP of the rotation baseline once the stream is done: per pair of unit sets of different
        models, R x (C Q_b^T and Q_a C) = R x 2 x n_a n_b (n_a + n_b) with dense Q; with the fast kind
        (compare/_rotations.py: rounds of 128-wide Haar blocks, ceil(log n / log 128) + 2 of them)
        R x 2 x n_a n_b x 128 x (rounds_a + rounds_b). Independent of the number of tokens, so it
        dominates short streams of wide unit sets."""
        sets = [(m, n) for m, unit_sets in self.layout.items() for n in unit_sets.values()]
        total = 0.0
        for i, (ma, na) in enumerate(sets):
            for mb, nb in sets[i + 1:]:
                if ma != mb:
                    total += 2.0 * na * nb * (_rotation_cost(self.rotation, na) + _rotation_cost(self.rotation, nb))
        return self.rotations * total

    @property
    def pass_bytes(self) -> list[int]:
        """Bytes of each pass: resident terms plus its cross blocks."""
        element = _ELEMENT[self.dtype]
        fixed = sum(self.resident.values())
        return [fixed + element * sum(b.entries for b in blocks if not b.is_gram) for blocks in self.passes]

    @property
    def flop_per_token(self) -> float:
        """Multiply-adds x 2 of every block's GEMM per token (all passes together)."""
        return 2.0 * sum(b.entries for blocks in self.passes for b in blocks)

    def table(self) -> pd.DataFrame:
        """One row per pass: blocks, cross entries, bytes, GFLOP per token."""
        return pd.DataFrame({
            "pass": range(len(self.passes)),
            "blocks": [len(blocks) for blocks in self.passes],
            "gram_blocks": [sum(b.is_gram for b in blocks) for blocks in self.passes],
            "bytes": self.pass_bytes,
            "gflop_per_token": [2e-9 * sum(b.entries for b in blocks) for blocks in self.passes],
        })

    def to_dict(self) -> dict:
        """JSON-able: passes as lists of [row_start, row_stop, column_start, column_stop]."""
        return {"passes": [[list(b) for b in blocks] for blocks in self.passes], "resident": self.resident,
                "budget": self.budget, "dtype": self.dtype, "batch_tokens": self.batch_tokens}


def parse_bytes(value) -> int:
    """Bytes from an int or a string such as "12GiB", "500 MB", "2e9" (units: B, kB, MB, GB, KiB, MiB, GiB).

    >>> parse_bytes("1.5GiB"), parse_bytes(4096)
    (1610612736, 4096)
    """
    if isinstance(value, bool):
        raise UniversalityError(f"memory_budget must be a size such as '12GiB' or a number of bytes, got {value!r}")
    if isinstance(value, (int, np.integer)) and value > 0:
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS or float(match.group(1)) <= 0:
        raise UniversalityError(f"memory_budget must be a positive size such as '12GiB', '500MB' or a number of "
                                f"bytes, got {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def available_memory(device: str = "cpu") -> int:
    """Bytes available on `device`: free CUDA memory, or the host's MemAvailable (/proc/meminfo)."""
    if str(device).startswith("cuda"):
        import torch
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def plan_passes(layout: Layout, *, budget: int | None, dtype: str = "float32", batch_tokens: int,
                rotations: int = 1, rotation: str = "auto") -> Plan:
    """Group the blocks of `layout` into passes that each fit `budget` bytes (module docstring).

    budget=None, or a budget that holds everything: one pass of `default_blocks` (one GEMM per model).
    A budget below the resident memory plus the largest unit-set pair's block raises one line naming both.
    """
    element = _ELEMENT[dtype]
    sets = [(m, s, n) for m, unit_sets in layout.items() for s, n in unit_sets.items()]
    total_units = sum(n for _, _, n in sets)
    widths = {(index, n) for unit_sets in layout.values() for index, n in enumerate(unit_sets.values())}
    largest_pair = max((na * nb for (ma, _, na) in sets for (mb, _, nb) in sets if ma != mb), default=0)
    resident = {
        "grams": element * sum(n * n for _, _, n in sets),
        "means": 8 * total_units,
        "rotations": rotations * sum((8 + element) * n * n if rotation_kind_for(rotation, n) == "haar"
                                     else 16 * n for _, n in widths),
        "batch": 3 * 4 * (batch_tokens + 1) * total_units,
        "product": 4 * min(PRODUCT_TILE, (batch_tokens + 1) * total_units, max(total_units * total_units, 1)),
        "reduction": 3 * element * largest_pair,
    }
    grams = [b for b in default_blocks(layout) if b.is_gram]
    full = [b for b in default_blocks(layout) if not b.is_gram]
    fixed = sum(resident.values())
    if budget is None or fixed + element * sum(b.entries for b in full) <= budget:
        return Plan(dict(layout), [default_blocks(layout)], resident, budget, dtype, batch_tokens, rotations,
                    rotation)
    room = budget - fixed
    blocks = _cross_blocks(layout, room // element)
    if blocks is None or room <= 0:
        raise UniversalityError(
            f"memory_budget {_size(budget)} is below one pass's smallest need: {_size(fixed)} resident ("
            + ", ".join(f"{k} {_size(v)}" for k, v in resident.items())
            + f") plus the largest unit-set pair's block, {_size(element * largest_pair)}; raise memory_budget to at "
            f"least {_size(fixed + element * largest_pair)} or stream fewer tokens per batch")
    passes, loads = [list(grams)], [0]
    for block in blocks:  # first fit, in order: neighbouring blocks share a pass
        size = element * block.entries
        k = next((k for k, load in enumerate(loads) if load + size <= room), None)
        if k is None:
            passes.append([])
            loads.append(0)
            k = len(passes) - 1
        passes[k].append(block)
        loads[k] += size
    return Plan(dict(layout), [_merge_rows(p) for p in passes], resident, budget, dtype, batch_tokens, rotations,
                rotation)


def budget_for_passes(layout: Layout, passes: int, *, dtype: str = "float32", batch_tokens: int,
                      rotations: int = 1, rotation: str = "auto") -> int:
    """The smallest memory budget (bytes) whose `plan_passes` plan has exactly `passes` passes (the
    other arguments as there): a plan's passes fall as its budget grows, so a bisection between the
    smallest budget that plans at all and the one-pass size finds it. A count no budget gives (blocks
    are cut only at unit-set boundaries) raises one line naming the counts beside it.

    >>> layout = {m: {"s0": 40, "s1": 24} for m in "abc"}
    >>> budget = budget_for_passes(layout, 3, batch_tokens=300)
    >>> [len(plan_passes(layout, budget=b, batch_tokens=300).passes) for b in (budget, budget - 1)]
    [3, 5]
    """
    if type(passes) is not int or passes < 1:
        raise UniversalityError(f"passes must be an integer >= 1, got {passes!r}")

    def count(budget: int) -> int:
        return len(plan_passes(layout, budget=budget, dtype=dtype, batch_tokens=batch_tokens, rotations=rotations,
                               rotation=rotation).passes)
    whole = plan_passes(layout, budget=None, dtype=dtype, batch_tokens=batch_tokens, rotations=rotations,
                        rotation=rotation)
    sets = [(m, n) for m, unit_sets in layout.items() for n in unit_sets.values()]
    largest_pair = max((na * nb for ma, na in sets for mb, nb in sets if ma != mb), default=0)
    high = whole.pass_bytes[0]  # one pass
    low = min(high, sum(whole.resident.values()) + _ELEMENT[dtype] * largest_pair)  # the smallest that plans
    most = count(low)
    if most <= passes:
        high = low
    while high - low > 1:  # count(low) > passes >= count(high)
        middle = (low + high) // 2
        low, high = (low, middle) if count(middle) <= passes else (middle, high)
    if count(high) != passes:
        beside = f"{high} bytes plan {count(high)}" + (f", {high - 1} bytes plan {count(high - 1)}" if high > low else "")
        raise UniversalityError(f"no memory budget plans exactly {passes} passes over this layout ({beside}; at most "
                                f"{most}); ask for another number of passes")
    return high


def _cross_blocks(layout: Layout, room: int) -> list[Block] | None:
    """Per model pair (a, b), per unit set of a: a block [set of a, all of b] when it fits `room`
    entries, else [set of a, run of b's unit sets] runs that fit; None if one unit-set pair does not."""
    offsets, models, blocks = unit_offsets(layout), list(layout), []
    for i, a in enumerate(models):
        row = offsets[a]
        for n_a in layout[a].values():
            for b in models[i + 1:]:
                start, column = offsets[b], offsets[b]
                for n_b in layout[b].values():
                    if n_a * n_b > room:
                        return None
                    if n_a * (column + n_b - start) > room:
                        blocks.append(Block(row, row + n_a, start, column))
                        start = column
                    column += n_b
                blocks.append(Block(row, row + n_a, start, column))
            row += n_a
    return blocks


def _merge_rows(blocks: list[Block]) -> list[Block]:
    """Blocks of one pass with the same rows and adjacent columns merged into one (one wider GEMM)."""
    merged: list[Block] = []
    for block in sorted(blocks):
        last = merged[-1] if merged else None
        if (last is not None and not block.is_gram and not last.is_gram and last[:2] == block[:2]
                and last.column_stop == block.column_start):
            merged[-1] = Block(last.row_start, last.row_stop, last.column_start, block.column_stop)
        else:
            merged.append(block)
    return merged


def _rotation_cost(kind: str, size: int) -> float:
    """Multiply-adds per entry of applying a rotation of width `size`: n for dense Haar, 128 per round for
    the fast kind (compare/_rotations.py: one Haar block up to 128, else ceil(log n / log 128) + 2 rounds)."""
    if rotation_kind_for(kind, size) == "haar":
        return float(size)
    return 128.0 * (1 if size <= 128 else math.ceil(math.log(size) / math.log(128)) + 2)


def _size(value: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"
