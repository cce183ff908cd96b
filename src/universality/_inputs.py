"""Checking inputs once, in one place: arrays of named shape, and activation batches.

| function            | input                                      | returns                                 |
|---------------------|--------------------------------------------|-----------------------------------------|
| `as_float64`        | tensor, array or nested lists; named axes  | finite float64 numpy, shape checked     |
| `as_float64_tensor` | the same                                   | finite float64 CPU torch tensor         |
| `as_activations`    | one Tensor[tokens, units]                  | the tensor, detached; integers float64  |
| `check_batch`       | {model: {unit_set: Tensor[tokens, units]}} | the same with str keys, tensors checked |
| `layout_of`         | a checked batch                            | {model: {unit_set: units}}              |
| `check_device`      | a device string                            | the `torch.device`, known to be usable  |

Every failure is one `UniversalityError` line naming the input and the fix. User strings appear
through `repr`, so a name holding a newline cannot break the line.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .errors import UniversalityError

__all__ = ["resolve_device", "Layout", "as_activations", "as_float64", "as_float64_tensor", "check_batch", "check_device", "layout_of"]

Layout = dict[str, dict[str, int]]  # {model: {unit_set: number of units}}, ordered
_RESHAPE = "reshape [batch, pos, units] activations with x.reshape(-1, x.shape[-1])"


def as_float64(value, name: str, shape: Mapping[str, int | None]) -> np.ndarray:
    """`value` (torch tensor, numpy array, nested lists) as finite float64 numpy with the named `shape`.

    `shape` maps axis names to sizes, None for any size: {"pairs": 576, "units": None}.
    Integers are converted; bool and complex values are refused. A float64 CPU tensor shares its
    memory with the result: callers never write into it.
    """
    if isinstance(value, torch.Tensor):
        _check_tensor_kind(value, name)
        array = value.detach().cpu().double().numpy()
    else:
        array = _real_array(value, name)
    sizes = list(shape.values())
    if array.ndim != len(sizes) or any(s is not None and s != t for s, t in zip(sizes, array.shape)):
        spec = ", ".join(k if s is None else f"{k}={s}" for k, s in shape.items())
        raise UniversalityError(f"{name} has shape {list(array.shape)}; expected [{spec}]")
    if not np.isfinite(array).all():
        raise UniversalityError(f"{name} has NaN or infinite entries; pass finite values")
    return array


def as_float64_tensor(value, name: str, shape: Mapping[str, int | None]) -> torch.Tensor:
    """As `as_float64`, returned as a float64 CPU torch tensor."""
    return torch.from_numpy(as_float64(value, name, shape))


def as_activations(x, where: str, units: int | None = None) -> torch.Tensor:
    """One unit set's activations, checked: a dense 2-D real tensor [tokens, units >= 1] with data.

    `where` names it in errors ("model 'a', unit set 'mlp'"); `units`, if given, is the expected width.
    Returns x detached from autograd (requires_grad is fine input); integer tensors as float64 (exact
    below 2^53). Finiteness is left to the consumer, which reads it off the batch means for free.
    """
    if not isinstance(x, torch.Tensor):
        raise UniversalityError(f"{where} is a {type(x).__name__}; expected Tensor[tokens, units] "
                                "(convert with torch.as_tensor(x))")
    _check_tensor_kind(x, where)
    if x.ndim != 2:
        raise UniversalityError(f"{where} has shape {list(x.shape)}; expected Tensor[tokens, units]: {_RESHAPE}")
    if units is not None and x.shape[1] != units:
        raise UniversalityError(f"{where} has shape {list(x.shape)}; expected Tensor[tokens, units={units}]")
    if x.shape[1] == 0:
        raise UniversalityError(f"{where} has 0 units; drop the empty unit set")
    x = x.detach()
    return x if x.is_floating_point() else x.double()


def check_batch(batch, *, min_models: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    """Check one batch `{model: {unit_set: Tensor[tokens, units]}}` and return it with str keys.

    A bare Tensor[tokens, units] in place of the inner dict is one unit set named "units". Checks:
    at least `min_models` models, each with at least one unit set; every tensor as `as_activations`;
    one token count across the batch (rows aligned by token). Keys become str: two keys with one
    str form (1 and "1") are refused, never merged.
    """
    if not isinstance(batch, Mapping):
        raise UniversalityError(f"a batch must be a dict {{model: {{unit_set: Tensor[tokens, units]}}}}, "
                                f"got a {type(batch).__name__}")
    models = {}
    for model, sets in _string_keys(batch, "model").items():
        if isinstance(sets, torch.Tensor):
            sets = {"units": sets}
        elif not isinstance(sets, Mapping):
            raise UniversalityError(f"model {model!r} holds a {type(sets).__name__}; expected a dict of unit sets "
                                    "or a Tensor[tokens, units]")
        if not sets:
            raise UniversalityError(f"model {model!r} has no unit sets; give it at least one Tensor[tokens, units]")
        models[model] = {name: as_activations(x, f"model {model!r}, unit set {name!r}")
                         for name, x in _string_keys(sets, f"model {model!r}: unit set").items()}
    if len(models) < min_models:
        plural = "s" if min_models > 1 else ""
        raise UniversalityError(f"a batch needs at least {min_models} model{plural}, got {len(models)} "
                                f"({', '.join(map(repr, models)) or 'none'}); add the models to compare")
    tokens = {}
    for model, sets in models.items():
        for name, x in sets.items():
            tokens.setdefault(x.shape[0], (model, name))
    if len(tokens) > 1:
        (count, (m1, s1)), (other, (m2, s2)) = list(tokens.items())[:2]
        raise UniversalityError(f"model {m1!r}, unit set {s1!r} has {count} tokens but model {m2!r}, unit set "
                                f"{s2!r} has {other}; rows must be aligned by token across the batch")
    return models


def layout_of(models: Mapping[str, Mapping[str, torch.Tensor]]) -> Layout:
    """{model: {unit_set: units}} of a checked batch."""
    return {m: {n: x.shape[1] for n, x in sets.items()} for m, sets in models.items()}


def resolve_device(device) -> str:
    """"auto" -> "cuda" when a CUDA device is present, else "cpu"; any other value as it is."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_device(device) -> torch.device:
    """`device` ("auto": `resolve_device`) as a `torch.device` that can hold tensors here; one line
    naming it otherwise."""
    try:
        parsed = torch.device(resolve_device(device))
        if parsed.type == "meta":
            raise RuntimeError
        torch.empty(0, device=parsed)
    except (RuntimeError, AssertionError, TypeError, ValueError):
        raise UniversalityError(f"device {device!r} is not usable here; pass 'cpu' or an available 'cuda:<index>'"
                                ) from None
    return parsed


def _check_tensor_kind(x: torch.Tensor, where: str) -> None:
    """A dense real tensor with data: not sparse, not on the meta device, not bool or complex."""
    if x.layout != torch.strided:
        raise UniversalityError(f"{where} is a sparse tensor ({x.layout}); pass x.to_dense()")
    if x.is_meta:
        raise UniversalityError(f"{where} is on the meta device and holds no values; pass a materialized tensor")
    if x.dtype == torch.bool or x.is_complex():
        raise UniversalityError(f"{where} has dtype {x.dtype}; pass real activations (x.float(); for complex "
                                "values compare x.real and x.imag as two unit sets)")


def _string_keys(mapping: Mapping, what: str) -> dict:
    """`mapping` with str keys; two keys of one str form (1 and "1") name both in the error."""
    out, original = {}, {}
    for key, value in mapping.items():
        name = key if isinstance(key, str) else str(key)
        if name in out:
            raise UniversalityError(f"{what} keys {original[name]!r} and {key!r} are both named {name!r}; "
                                    "rename one so they stay apart")
        out[name], original[name] = value, key
    return out


def _real_array(value, name: str) -> np.ndarray:
    """`value` as float64 numpy if it holds real numbers (integers or floats, also inside lists)."""
    kind = "values"
    try:
        array = np.asarray(value)
        kind = f"dtype {array.dtype}"
        if array.dtype.kind in "iufO":  # object arrays: lists of numbers of mixed types
            return array.astype(np.float64, copy=False)
    except (TypeError, ValueError):
        pass
    raise UniversalityError(f"{name} is a {type(value).__name__} of {kind}, not real numbers; "
                            "pass a float tensor or array")
