"""`compare_activations`: the entry point for users who bring their own activations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .._defaults import THRESHOLD
from .._inputs import check_device
from ..errors import UniversalityError
from ..moments import MomentAccumulator, layout_of, normalize_batch
from ._comparison import Comparison, check_settings, compare_moments

__all__ = ["compare_activations"]


def compare_activations(batches: Iterable, *, threshold: float = THRESHOLD, rotations: int = 1, seed: int = 0,
                        device: str = "cpu", dtype: str = "float64") -> Comparison:
    """Stream activation batches once and find the universal units.

    Parameters
    ----------
    batches : iterable of {model_name: {unit_set_name: Tensor[tokens, units]}}
        Every batch holds the same models and unit sets, rows aligned by token across models.
        A bare Tensor[tokens, units] in place of the inner dict is one unit set named "units".
        Any real dtype (integers are converted; bool and complex are refused); requires_grad is fine.
    threshold : float in (0, 1], default=0.5
        A unit is universal when its excess correlation exceeds this (Gurnee et al. 2024).
    rotations : int >= 1, default=1
        Haar rotations per unit set averaged in the baseline (exact, from the moments).
    seed : int >= 0, default=0
        Seeds the rotations.
    device : str, default='cpu'
    dtype : {'float32', 'float64'}, default='float64'
        Moment state precision (`MomentAccumulator`). float64 takes activations of any finite scale
        (1e-30 or 1e30 alike; the GEMMs stay float32); float32 halves the memory and refuses, in one
        line, activations whose squares it cannot hold.

    Every bad input raises one `UniversalityError` line naming the batch, model and unit set.

    >>> import torch
    >>> shared = torch.randn(500, 4)
    >>> batches = [{"a": shared[:, [0, 1, 2, 3]], "b": shared[:, [3, 2, 1, 0]]}]
    >>> result = compare_activations(batches)
    >>> result.pairs.query("model == 'a'")["partner_unit"].tolist()
    [3, 2, 1, 0]
    """
    check_settings(threshold, rotations, seed)
    if dtype not in ("float32", "float64"):
        raise UniversalityError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    check_device(device)
    if isinstance(batches, Mapping) or not isinstance(batches, Iterable):
        raise UniversalityError(f"batches must be an iterable of {{model: {{unit_set: Tensor}}}} dicts, got a "
                                f"{type(batches).__name__}; wrap a single batch in a list: [batch]")
    accumulator = None
    for index, batch in enumerate(batches):
        try:
            models = normalize_batch(batch, accumulator.layout if accumulator else None)
            if accumulator is None:
                accumulator = MomentAccumulator(layout_of(models), dtype=dtype, device=device)
            accumulator.update(models)
        except UniversalityError as error:
            raise UniversalityError(f"batch {index}: {error}") from None
    if accumulator is None:
        raise UniversalityError("the activation stream is empty: pass at least one batch")
    return compare_moments(accumulator.end_stream(), threshold=threshold, rotations=rotations, seed=seed)
