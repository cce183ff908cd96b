"""Helpers shared by the tests of memory-budgeted plans (test_scale, test_ray_backend)."""

import numpy as np
import pandas as pd

from universality.moments import budget_for_passes


def budget_for(layout, passes, *, dtype="float64", batch_tokens=500, rotations=2):
    """The smallest budget that plans `passes` passes (`moments.budget_for_passes`), with these tests' defaults."""
    return budget_for_passes(layout, passes, dtype=dtype, batch_tokens=batch_tokens, rotations=rotations)


def assert_same_tables(a, b, atol=1e-6):
    """The `units` and `pairs` tables of two comparisons: numbers within `atol`, the rest equal."""
    for name in ("units", "pairs"):
        x, y = getattr(a, name), getattr(b, name)
        numbers = x.select_dtypes("number").columns
        np.testing.assert_allclose(x[numbers].to_numpy(float), y[numbers].to_numpy(float), atol=atol, rtol=0)
        pd.testing.assert_frame_equal(x.drop(columns=numbers), y.drop(columns=numbers))
