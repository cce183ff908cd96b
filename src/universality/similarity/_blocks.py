"""The co-moment blocks representation similarity needs, and reading one pair's cross-moment from them.

Global unit order is the accumulator's: models in stream order, each model's unit sets concatenated.
Similarity compares every unit set with every later one, so it needs, beyond `default_blocks` (each
set's Gram, and per model one block against all later models), per unit set one block against the
later unit sets of its own model (layer x layer inside a model). Every pair (a before b) then lies in
one block's rows and columns.
"""

from __future__ import annotations

import torch

from ..moments import Block, Layout, MomentAccumulator, default_blocks

__all__ = ["similarity_blocks", "unit_sets", "cross_moment"]

UnitSet = tuple[str, str]  # (model, unit_set)


def unit_sets(layout: Layout) -> dict[UnitSet, tuple[int, int]]:
    """{(model, unit set): (first, last + 1) global unit index}, in global order."""
    spans, start = {}, 0
    for model, sets in layout.items():
        for name, size in sets.items():
            spans[model, name] = (start, start + size)
            start += size
    return spans


def similarity_blocks(layout: Layout) -> list[Block]:
    """`default_blocks(layout)` plus, per unit set, one block against the later sets of its model."""
    blocks, spans = default_blocks(layout), unit_sets(layout)
    for model in layout:
        stop = max(stop for (m, _), (_, stop) in spans.items() if m == model)
        blocks += [Block(start, end, end, stop) for (m, _), (start, end) in spans.items() if m == model and end < stop]
    return blocks


def cross_moment(acc: MomentAccumulator, a: UnitSet, b: UnitSet) -> torch.Tensor:
    """C = sum (x_a - mean_a)(x_b - mean_b)^T [units_a, units_b] for unit set a before b (a view of the state)."""
    spans = unit_sets(acc.layout)
    (r0, r1), (c0, c1) = spans[a], spans[b]
    for block, value in acc.blocks_.items():
        if block.row_start <= r0 and r1 <= block.row_stop and block.column_start <= c0 and c1 <= block.column_stop:
            return value[r0 - block.row_start:r1 - block.row_start, c0 - block.column_start:c1 - block.column_start]
    raise KeyError(f"no block holds the co-moment of {a} and {b}")  # similarity_blocks holds every pair
