"""Cross-model comparisons derived from streamed moments: correlation, baselines, universality."""

from ._activations import compare_activations
from ._assignment import assign_partners
from ._baseline import haar_rotation
from ._comparison import Comparison, compare_moments
from ._correlation import dead_units, pearson
from ._features import FEATURE_RULES, universal_features
from ._rotations import ROTATION_KINDS, FastRotation, rotation
from ._universality import layer_summary, universality_null

__all__ = ["compare_activations", "compare_moments", "Comparison", "pearson", "dead_units", "haar_rotation",
           "rotation", "FastRotation", "ROTATION_KINDS", "layer_summary", "universality_null",
           "assign_partners", "universal_features", "FEATURE_RULES"]
