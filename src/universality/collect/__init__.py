"""Collecting unit activations: model adapters -> {model: {unit_set: [tokens, units]}} per batch
(`stream_activations`, the one streamer; `stream_layout`: what it will yield, without
running a model); `capture` for a bare module's hooks."""

from ._hooks import capture, select_unit_sets
from ._stream import batch_count, stream_activations, stream_layout

__all__ = ["capture", "select_unit_sets", "stream_activations", "stream_layout", "batch_count"]
