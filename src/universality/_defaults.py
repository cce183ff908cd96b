"""Every default threshold, defined once, with where it comes from. The config, the comparison and
the analyses all read their defaults from here."""

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
