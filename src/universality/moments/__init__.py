"""Streaming moments: per-model means and Grams, cross-model co-moments, merged by Chan's update."""

from ._accumulator import MomentAccumulator
from ._batches import Layout, layout_of, normalize_batch
from ._io import load_moments, read_manifest, save_moments

__all__ = ["MomentAccumulator", "Layout", "layout_of", "normalize_batch", "save_moments", "load_moments", "read_manifest"]
