"""Streaming moments: per-model means and Grams, cross-model co-moments, merged by Chan's update."""

from ._accumulator import MomentAccumulator
from ._batches import Layout, layout_of, normalize_batch
from ._io import load_moments, read_manifest, save_moments
from ._top_activations import TopActivations, log_bin_edges

__all__ = ["MomentAccumulator", "Layout", "layout_of", "normalize_batch", "save_moments", "load_moments", "read_manifest",
           "TopActivations", "log_bin_edges"]
