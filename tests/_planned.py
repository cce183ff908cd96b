"""Helpers shared by the tests of memory-budgeted plans (test_scale, test_ray_backend)."""

import numpy as np
import pandas as pd

from universality.moments import plan_passes


def budget_for(layout, passes, *, dtype="float64", batch_tokens=500, rotations=2):
    """A budget that needs about `passes` passes: the resident memory plus 1/passes of the cross blocks."""
    one = plan_passes(layout, budget=None, dtype=dtype, batch_tokens=batch_tokens, rotations=rotations)
    resident = sum(one.resident.values())
    return resident + (one.pass_bytes[0] - resident) // passes + 1


def assert_same_tables(a, b, atol=1e-6):
    """The `units` and `pairs` tables of two comparisons: numbers within `atol`, the rest equal."""
    for name in ("units", "pairs"):
        x, y = getattr(a, name), getattr(b, name)
        numbers = x.select_dtypes("number").columns
        np.testing.assert_allclose(x[numbers].to_numpy(float), y[numbers].to_numpy(float), atol=atol, rtol=0)
        pd.testing.assert_frame_equal(x.drop(columns=numbers), y.drop(columns=numbers))
