"""universality: which neurons, features and representations do independently trained networks share?

Public API:
- `compare_activations(batches, *, threshold, rotations, seed, device) -> Comparison`
- `compare_representations(batches, *, metrics, reservoir, k, ridge, seed, nulls) -> pandas.DataFrame`:
  CKA, CCA, SVCCA, PWCCA, Procrustes, regression, debiased CKA and mutual k-NN of every unit-set pair
- `Comparison` (tables `units`, `pairs`, `layers`; `correlation(a, b)`; `save` / `load`)
- `MomentAccumulator`, the streaming engine underneath
- `load_model(path_or_hub_name, device)` -> a model adapter with named unit sets (Hugging Face models)
- `UniversalityError`, raised for every bad input with a one-line message
"""

from .errors import UniversalityError

__all__ = ["compare_activations", "compare_representations", "Comparison", "MomentAccumulator", "UniversalityError",
           "load_model"]
__version__ = "0.1.0"

# The names that need torch are imported on first use (PEP 562), so `univ` can check a config and
# print a one-line error without loading torch.
_LAZY = {"compare_activations": "compare", "compare_representations": "similarity", "Comparison": "compare",
         "MomentAccumulator": "moments", "load_model": "models"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'universality' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
