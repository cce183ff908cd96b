"""Every default threshold, defined once, with where it comes from, and the one rule for a dead
unit. The config, the comparison and the analyses all read them from here."""

# A unit is dead when its standard deviation over the stream is within float32 rounding of its mean:
# zero variance as far as float32 activations can tell. Its correlations are NaN, never 0.
DEAD_STD_PER_MEAN = 4 * 1.1920928955078125e-07  # 4 float32 epsilons


def is_dead(variance, mean):
    """Bool per unit (torch or numpy): population `variance` <= (DEAD_STD_PER_MEAN * |mean|)^2."""
    return variance <= (DEAD_STD_PER_MEAN * abs(mean)) ** 2


# The rotation baseline's kind "auto": dense Haar for unit sets up to this width (its QR and products
# cost O(n^3): about 2 s at 3072 on this machine), the fast structured rotation above it (projected
# 760 s for dense Haar at 16384 against 28-39 s for the fast kind; compare/_rotations.py).
HAAR_MAX_WIDTH = 4096


def rotation_kind_for(kind: str, size: int) -> str:
    """The rotation kind used for a unit set of `size` units: "auto" -> "haar" up to HAAR_MAX_WIDTH, else
    "fast"; "haar" and "fast" as they are."""
    if kind == "auto":
        return "haar" if size <= HAAR_MAX_WIDTH else "fast"
    return kind


# Gurnee et al. 2024: a unit is universal when its excess correlation (mean max correlation with the
# other models minus the same against the rotation baseline) exceeds 0.5.
THRESHOLD = 0.5

# Chughtai, Chan, Nanda 2023: a key irrep's logit similarity. Random logits score about 1/sqrt(n^3)
# (0.0008 for S5), so 0.005 is well above chance for |G| >= 60 but not for tiny groups (S4: 0.0085).
KEY_THRESHOLD = 0.005

# A unit's irrep is the one holding more than half its variance: at most one irrep can, so no ties.
UNIT_THRESHOLD = 0.5

# The learning-order cut of the authors' determine_key_rep_order.py. The key cut does not serve: random
# logits of small groups already score above it (S4: about 0.009), so every irrep would "emerge" at once.
EMERGENCE_THRESHOLD = 0.05
