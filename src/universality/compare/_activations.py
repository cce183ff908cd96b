"""`compare_activations`: the entry point for users who bring their own activations."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import UniversalityError
from ..moments import MomentAccumulator, layout_of, normalize_batch
from ._comparison import Comparison, check_settings, compare_moments

__all__ = ["compare_activations"]


def compare_activations(batches: Iterable, *, threshold: float = 0.5, rotations: int = 1, seed: int = 0,
                        device: str = "cpu") -> Comparison:
    """Stream activation batches once and find the universal units.

    Parameters
    ----------
    batches : iterable of {model_name: {unit_set_name: Tensor[tokens, units]}}
        Every batch holds the same models and unit sets, rows aligned by token across models.
        A bare Tensor[tokens, units] in place of the inner dict is one unit set named "units".
    threshold : float in (0, 1], default=0.5
        A unit is universal when its excess correlation exceeds this (Gurnee et al. 2024).
    rotations : int >= 1, default=1
        Haar rotations per unit set averaged in the baseline (exact, from the moments).
    seed : int, default=0
        Seeds the rotations.
    device : str, default='cpu'

    >>> import torch
    >>> shared = torch.randn(500, 4)
    >>> batches = [{"a": shared[:, [0, 1, 2, 3]], "b": shared[:, [3, 2, 1, 0]]}]
    >>> result = compare_activations(batches)
    >>> result.pairs.query("model == 'a'")["partner_unit"].tolist()
    [3, 2, 1, 0]
    """
    check_settings(threshold, rotations)
    accumulator = None
    for batch in batches:
        models = normalize_batch(batch, accumulator.layout if accumulator else None)
        if accumulator is None:
            accumulator = MomentAccumulator(layout_of(models), device=device)
        accumulator.update(models)
    if accumulator is None:
        raise UniversalityError("the activation stream is empty: pass at least one batch")
    return compare_moments(accumulator, threshold=threshold, rotations=rotations, seed=seed)
