"""universality: which neurons, features and representations do independently trained networks share?

Public API:
- `compare_activations(batches, *, threshold, rotations, seed, device) -> Comparison`
- `Comparison` (tables `units`, `pairs`, `layers`; `correlation(a, b)`; `save` / `load`)
- `MomentAccumulator`, the streaming engine underneath
- `load_model(path_or_hub_name, device)` -> a model adapter with named unit sets (Hugging Face models)
- `UniversalityError`, raised for every bad input with a one-line message
"""

from .compare import Comparison, compare_activations
from .errors import UniversalityError
from .models import load_model
from .moments import MomentAccumulator

__all__ = ["compare_activations", "Comparison", "MomentAccumulator", "UniversalityError", "load_model"]
__version__ = "0.1.0"
