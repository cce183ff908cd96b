"""Checking streamed batches before they reach the accumulator.

A batch is `{model: {unit_set: Tensor[tokens, units]}}`; a bare `Tensor[tokens, units]` in place
of the inner dict means one unit set named "units". A *layout* is the structure every batch of a
stream must share: `{model: {unit_set: units}}`, in order.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import UniversalityError

__all__ = ["Layout", "normalize_batch", "layout_of"]

Layout = dict[str, dict[str, int]]  # {model: {unit_set: number of units}}, ordered


def _as_unit_sets(model: str, value) -> dict[str, torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return {"units": value}
    if isinstance(value, Mapping):
        return dict(value)
    raise UniversalityError(
        f"model {model!r}: expected a dict of unit sets or a Tensor[tokens, units], got {type(value).__name__}"
    )


def normalize_batch(batch, layout: Layout | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Check one batch and return it as `{model: {unit_set: Tensor[tokens, units]}}`.

    Checks: at least two models; every value 2-D with the same token count; every model and unit
    set of `layout` present with its unit count (when a layout is given). Finiteness is checked
    by the accumulator from the batch means, which is free.
    """
    if not isinstance(batch, Mapping):
        raise UniversalityError(f"a batch must be a dict {{model: activations}}, got {type(batch).__name__}")
    models = {str(m): _as_unit_sets(str(m), v) for m, v in batch.items()}
    if len(models) < 2:
        raise UniversalityError(f"universality needs at least 2 models per batch, got {list(models)}")
    tokens = None
    for model, sets in models.items():
        if not sets:
            raise UniversalityError(f"model {model!r} has no unit sets")
        for name, x in sets.items():
            if not isinstance(x, torch.Tensor) or x.ndim != 2:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise UniversalityError(
                    f"{model}/{name}: expected Tensor[tokens, units], got {shape}; reshape [batch, pos, units] "
                    "activations with x.reshape(-1, x.shape[-1])"
                )
            if tokens is None:
                tokens = x.shape[0]
            elif x.shape[0] != tokens:
                raise UniversalityError(
                    f"{model}/{name} has {x.shape[0]} tokens in this batch but others have {tokens}: "
                    "rows must be aligned by token across models"
                )
    _check_unit_sets(models, layout)
    return models


def _check_unit_sets(models: dict[str, dict[str, torch.Tensor]], layout: Layout | None) -> None:
    """Every model has the unit sets of the layout (with its sizes) or, with no layout yet, of the first model."""
    if layout is not None and list(models) != list(layout):
        missing = [m for m in layout if m not in models]
        extra = [m for m in models if m not in layout]
        raise UniversalityError(f"batch models differ from the first batch: missing {missing}, unexpected {extra}")
    first_model, first_sets = next(iter(models.items()))
    for model, sets in models.items():
        expected = layout[model] if layout is not None else first_sets
        source = "the first batch" if layout is not None else f"model {first_model!r}"
        missing = [n for n in expected if n not in sets]
        if missing:
            raise UniversalityError(
                f"unit set {missing[0]!r} is missing from model {model!r} ({source} has it); "
                f"{model!r} has: {', '.join(sets)}"
            )
        extra = [n for n in sets if n not in expected]
        if extra:
            raise UniversalityError(f"unit set {extra[0]!r} of model {model!r} is not in {source}")
        if layout is not None:
            for name, size in expected.items():
                if sets[name].shape[1] != size:
                    raise UniversalityError(
                        f"{model}/{name} has {sets[name].shape[1]} units in this batch but {size} in the first"
                    )


def layout_of(models: dict[str, dict[str, torch.Tensor]]) -> Layout:
    """The layout of a normalized batch."""
    return {m: {n: x.shape[1] for n, x in sets.items()} for m, sets in models.items()}
