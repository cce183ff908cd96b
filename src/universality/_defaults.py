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

# Representation similarity (universality.similarity). The ridge of CCA, PWCCA and regression, as a
# fraction of each side's mean variance: S + RIDGE * (tr S / n) I. Any RIDGE > 0 keeps a rank-deficient
# covariance (a unit set wider than the tokens) invertible; 1e-3 leaves every direction holding more
# than ~0.1% of the mean variance at full weight and stays above float32 accumulation noise (~1e-7 of
# the largest eigenvalue) unless the spectrum spans more than 1e4 between its mean and its maximum.
SIMILARITY_RIDGE = 1e-3
# SVCCA keeps each side's top principal directions holding this fraction of its variance (Raghu et al. 2017).
SVCCA_VARIANCE = 0.99
# Principal angles between top principal subspaces (similarity.principal_angles) keep, per side, the fewest
# top directions holding this fraction of its variance: 0.9 drops the low-variance tail whose directions,
# whitened to unit length, would count as much as the main ones (SVCCA's 0.99 keeps more of it).
SUBSPACE_VARIANCE = 0.9
# Token rows kept (seeded, mergeable) for debiased CKA, mutual k-NN and the shuffled nulls.
RESERVOIR_ROWS = 4096
# Neighbours per row of mutual k-NN alignment (Huh et al. 2024 use k = 10; chance is k / (rows - 1)).
KNN_NEIGHBOURS = 10
# Token-shuffled partners per score, for null_mean and null_std.
SIMILARITY_NULLS = 3

# Clock or pizza (Zhong et al. 2023, arXiv 2306.17844). The paper's exemplars: pizza (model A, constant
# attention) gradient symmetricity 0.994, distance irrelevance 0.17; clock (model B) symmetricity 0.33. In
# the authors' released 1-layer sweep (fjzzq2002/pizza result/1l_fixedwidth.csv: test accuracy > 0.99,
# circularity > 0.99), attention rate < 0.1 gives symmetricity >= 0.987 in 95% of runs (median 0.994;
# 0.992 with an "=" token), distance irrelevance median 0.28 (0.22 with "="); rate >= 0.9 gives symmetricity
# below 0.68 in 95% (below 0.975 with "=", median 0.96) and distance irrelevance >= 0.66 in 95% (median
# 0.83). So: pizza = symmetric AND distance-dependent, clock = neither, anything else "mixed" (the
# paper's accompanied pizzas and non-circular solutions land there).
PIZZA_MIN_SYMMETRICITY = 0.98  # pizza at or above, clock below
PIZZA_MAX_DISTANCE_IRRELEVANCE = 0.5  # pizza at or below
CLOCK_MIN_DISTANCE_IRRELEVANCE = 0.65  # clock at or above
