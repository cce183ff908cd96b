import os

import pytest
import torch

# `make test` runs the files on 2 pytest-xdist workers, one per core: each worker's torch then uses one
# thread, since 2 workers x 2 threads on 2 cores spin in OpenMP barriers (measured: 100 small
# accumulator updates took 6.4 s on 2 threads beside another busy process, 0.28 s on 1). Alone, 2 threads.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Tests share 2 cores with whatever else runs; results never depend on the thread count."""
    torch.set_num_threads(THREADS)
    yield
