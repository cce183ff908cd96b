"""Reading SAE files: JSON configs, safetensors and torch state dicts, with every error naming the file.

A `TensorFile` hands out each tensor once, float32 on the CPU, after checking its shape against the
sizes read from the config and rejecting NaN or infinite values; a matrix comes out [latents, d_in]
whichever way it was stored. `check_all_taken` then refuses any tensor the layout does not name, so a
part of an SAE the loader cannot represent (a skip connection, a transcoder's output bias) is never
dropped silently.
"""

import json
import pickle
from pathlib import Path

import torch

from ..errors import UniversalityError, short_repr

__all__ = ["TensorFile", "read_json_object", "read_safetensors", "read_torch", "size", "topk_k", "jump_threshold"]


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`; `UniversalityError` when it is missing, unreadable or not an object."""
    if not path.is_file():
        raise UniversalityError(f"{path}: file not found")
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON or bad UTF-8
        raise UniversalityError(f"{path}: not readable JSON ({_one_line(error)})") from None
    if not isinstance(value, dict):
        raise UniversalityError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_safetensors(path: Path) -> "TensorFile":
    """The tensors of the safetensors file `path`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise UniversalityError(f"{path}: file not found")
    try:
        return TensorFile(path, load_file(str(path)))
    except (SafetensorError, OSError) as error:
        raise UniversalityError(f"{path}: not a readable safetensors file ({_one_line(error)})") from None


def read_torch(path: Path) -> dict:
    """The state dict pickled in `path`, read with `weights_only=True`: tensors and plain containers only,
    never code."""
    if not path.is_file():
        raise UniversalityError(f"{path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        # torch's own messages span several lines (with terminal colours): name the error's type only
        raise UniversalityError(f"{path}: not a plain state dict of tensors (torch.load with weights_only=True "
                                f"refused it: {type(error).__name__})") from None
    if not isinstance(state, dict):
        raise UniversalityError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def size(config: dict, key: str, path: Path) -> int:
    """`config[key]` as a positive int (an SAE's d_in or latent count); `path` is the config's file."""
    value = config.get(key)
    if value is None:
        raise UniversalityError(f"{path}: no {key!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise UniversalityError(f"{path}: {key} must be an integer, got {short_repr(value)}")
    if value <= 0:
        raise UniversalityError(f"{path}: {key} is {value}; an SAE needs at least one input and one latent")
    return value


def topk_k(value: object, latents: int, path: Path) -> int:
    """`value` as the number of latents a top-k rule keeps, in 1..latents; `path` is where it was read."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= latents:
        raise UniversalityError(f"{path}: k must be an integer in 1..{latents} (the latent count), "
                                f"got {short_repr(value)}")
    return value


def jump_threshold(threshold: torch.Tensor) -> torch.Tensor:
    """A library's JumpReLU threshold as `SAE`'s: SAELens and dictionary_learning compute
    relu(pre) * 1[pre > t], which equals `SAE`'s pre * 1[pre > max(t, 0)] for every pre."""
    return threshold.clamp_min(0)


class TensorFile:
    """The tensors of one weights file, each taken at most once (float32, CPU, finite, shape checked)."""

    def __init__(self, path: Path, tensors: dict):
        self.path = path
        self._tensors = dict(tensors)

    def has(self, key: str) -> bool:
        return key in self._tensors

    def take(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Tensor `key` of exactly `shape` (() for a scalar), as float32."""
        tensor = self._pop(key)
        if tuple(tensor.shape) != shape:
            raise UniversalityError(f"{self.path}: {key} has shape {tuple(tensor.shape)}, expected {shape}")
        return self._finite(key, tensor)

    def matrix(self, key: str, d_in: int, latents: int, *, rows: str) -> torch.Tensor:
        """Matrix `key` as [latents, d_in], float32. `rows` ("latents" or "d_in") is the orientation the
        layout documents; the other one is accepted too, told apart by the config's sizes (never by which
        dimension is larger). A square matrix (d_in == latents) is read as documented."""
        tensor = self._pop(key)
        shape = tuple(tensor.shape)
        documented = (latents, d_in) if rows == "latents" else (d_in, latents)
        if shape == documented:
            oriented = tensor if rows == "latents" else tensor.T
        elif shape == documented[::-1]:
            oriented = tensor.T if rows == "latents" else tensor
        else:
            raise UniversalityError(f"{self.path}: {key} has shape {shape}, which is neither [latents, d_in] = "
                                    f"{(latents, d_in)} nor [d_in, latents] = {(d_in, latents)} for the "
                                    f"config's d_in {d_in} and {latents} latents")
        return self._finite(key, oriented).contiguous()

    def integers(self, key: str) -> list[int]:
        """The integers in tensor `key` (a buffer such as dictionary_learning's `group_sizes`), flattened."""
        tensor = self._pop(key)
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise UniversalityError(f"{self.path}: {key} must hold integers, got {tensor.dtype}")
        return tensor.flatten().tolist()

    def integer(self, key: str) -> int:
        """The one integer in tensor `key` (a buffer such as dictionary_learning's `k`)."""
        values = self.integers(key)
        if len(values) != 1:
            raise UniversalityError(f"{self.path}: {key} must hold one integer, got {len(values)}")
        return values[0]

    def check_all_taken(self, what: str) -> None:
        """Refuse any tensor not taken: it is a part of the SAE that `what` does not represent."""
        if self._tensors:
            names = sorted(self._tensors)
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise UniversalityError(f"{self.path}: tensor {names[0]!r}{more} is not part of {what}; "
                                    "it cannot be represented, so the file is not loaded")

    def _pop(self, key: str) -> torch.Tensor:
        if key not in self._tensors:
            names = ", ".join(sorted(map(str, self._tensors))) or "none"
            raise UniversalityError(f"{self.path}: no tensor {key!r} (it has: {short_repr(names)})")
        tensor = self._tensors.pop(key)
        if not isinstance(tensor, torch.Tensor):
            raise UniversalityError(f"{self.path}: {key} is a {type(tensor).__name__}, not a tensor")
        return tensor

    def _finite(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(device="cpu", dtype=torch.float32)
        if not bool(torch.isfinite(tensor).all()):
            raise UniversalityError(f"{self.path}: {key} has NaN or infinite values")
        return tensor


def _one_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
