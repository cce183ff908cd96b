import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Tests share 2 cores with whatever else runs; results never depend on the thread count."""
    torch.set_num_threads(2)
    yield
