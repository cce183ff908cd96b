"""Blocks of the co-moment state: rectangles of global unit indices cut at unit-set boundaries.

Units are numbered globally: models in stream order, each model's units concatenated in unit-set
order (`unit_offsets`). A `Block` is [rows, columns] of that numbering; a Gram block has rows ==
columns. The default blocks (one pass, everything) are each unit set's Gram and, per model, one
cross block against every later model side by side (`default_blocks`).
"""

from __future__ import annotations

from typing import NamedTuple

from ._batches import Layout

__all__ = ["Block", "unit_offsets", "unit_set_spans", "default_blocks"]


class Block(NamedTuple):
    """A rectangle of the co-moment matrix in global unit indices: rows [row_start, row_stop) by
    columns [column_start, column_stop); a Gram block has rows == columns."""
    row_start: int
    row_stop: int
    column_start: int
    column_stop: int

    @property
    def is_gram(self) -> bool:
        return (self.row_start, self.row_stop) == (self.column_start, self.column_stop)

    @property
    def entries(self) -> int:
        return (self.row_stop - self.row_start) * (self.column_stop - self.column_start)

    @property
    def name(self) -> str:
        return f"{self.row_start}:{self.row_stop}/{self.column_start}:{self.column_stop}"


def unit_offsets(layout: Layout) -> dict[str, int]:
    """Global index of each model's first unit: models in order, unit sets concatenated."""
    offsets, total = {}, 0
    for model, sets in layout.items():
        offsets[model] = total
        total += sum(sets.values())
    return offsets


def unit_set_spans(layout: Layout) -> list[tuple[str, str, int, int]]:
    """(model, unit set, global index of its first unit, of the one after its last) of every unit set, in order."""
    spans, start = [], 0
    for model, sets in layout.items():
        for name, size in sets.items():
            spans.append((model, name, start, start + size))
            start += size
    return spans


def default_blocks(layout: Layout) -> list[Block]:
    """Every unit set's Gram and, per model, one cross block against all later models."""
    offsets, blocks = unit_offsets(layout), []
    total = sum(sum(sets.values()) for sets in layout.values())
    for model, sets in layout.items():
        start = offsets[model]
        for size in sets.values():
            blocks.append(Block(start, start + size, start, start + size))
            start += size
        if start < total:
            blocks.append(Block(offsets[model], start, start, total))
    return blocks
