"""Collecting unit activations: forward hooks -> {model: {unit_set: [tokens, units]}} per batch."""

from ._hooks import capture, select_unit_sets
from ._adapters_stream import stream_unit_activations
from ._stream import batch_count, stream_activations, token_mask

__all__ = ["capture", "select_unit_sets", "stream_activations", "token_mask", "batch_count"]
__all__ += ["stream_unit_activations"]  # model adapters (Hugging Face, tiny, TransformerLens)
