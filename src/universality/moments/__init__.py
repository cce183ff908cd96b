"""Streaming moments: per-model means and Grams, cross-model co-moments, merged by Chan's update."""

from ._accumulator import MomentAccumulator
from ._blocks import Block, default_blocks
from ._batches import Layout, layout_of, normalize_batch
from ._plan import DEFAULT_BUDGET_FRACTION, Plan, available_memory, budget_for_passes, parse_bytes, plan_passes
from ._io import load_moments, read_manifest, save_moments
from ._top_activations import TopActivations, log_bin_edges

__all__ = ["MomentAccumulator", "Block", "default_blocks", "Layout", "layout_of", "normalize_batch", "save_moments", "load_moments", "read_manifest",
           "TopActivations", "log_bin_edges", "Plan", "plan_passes", "budget_for_passes", "DEFAULT_BUDGET_FRACTION", "parse_bytes", "available_memory"]
