"""Checking streamed batches before they reach the accumulator.

A batch is `{model: {unit_set: Tensor[tokens, units]}}`; a bare `Tensor[tokens, units]` in place
of the inner dict means one unit set named "units". A *layout* is the structure every batch of a
stream must share: `{model: {unit_set: units}}`, in order. The checks of one batch alone live in
`universality._inputs.check_batch`; this module adds the checks against the stream's layout.
"""

from __future__ import annotations

import torch

from .._inputs import Layout, check_batch, layout_of
from ..errors import UniversalityError

__all__ = ["Layout", "normalize_batch", "layout_of"]


def normalize_batch(batch, layout: Layout | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Check one batch and return it as `{model: {unit_set: Tensor[tokens, units]}}` with str keys.

    Checks (`check_batch`): at least two models; every value a dense real 2-D tensor with at least one
    unit and the same token count; keys distinct as strings. Then: every model and unit set of
    `layout` present with its unit count (when a layout is given), or of the first model (when not).
    Finiteness is checked by the accumulator from the batch means, which is free.
    """
    models = check_batch(batch, min_models=2)
    _check_unit_sets(models, layout)
    return models


def _check_unit_sets(models: dict[str, dict[str, torch.Tensor]], layout: Layout | None) -> None:
    """Every model has the unit sets of the layout (with its sizes) or, with no layout yet, of the first model;
    in any order."""
    if layout is not None and set(models) != set(layout):  # order may differ: the accumulator reads by name
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
                f"{model!r} has: {', '.join(map(repr, sets))}"
            )
        extra = [n for n in sets if n not in expected]
        if extra:
            raise UniversalityError(f"unit set {extra[0]!r} of model {model!r} is not in {source}")
        if layout is not None:
            for name, size in expected.items():
                if sets[name].shape[1] != size:
                    raise UniversalityError(
                        f"model {model!r}, unit set {name!r} has {sets[name].shape[1]} units in this batch but {size} "
                        "in the first; every batch must have the same unit sets"
                    )

