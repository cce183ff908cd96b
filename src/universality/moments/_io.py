"""Saving and loading moment state: one safetensors file holding the tensors, the manifest and a checksum.

`state.safetensors` carries, in its string metadata, the manifest (layout, dtype, token count,
batches done and the caller's `extra`, e.g. fingerprint and complete) and a sha256 of the manifest
and every tensor's bytes. One rename commits a save: a reader finds the old state or the new one,
never a new state beside an old count (which would double-count batches on resume). A state that is
missing, truncated or damaged reads as no state (`read_manifest` returns None) and is recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .._rundir import replace_atomically
from ..errors import UniversalityError
from ._accumulator import MomentAccumulator

__all__ = ["save_moments", "load_moments", "read_manifest"]

_STATE = "state.safetensors"
_MANIFEST_KEY, _CHECKSUM_KEY = "universality.manifest", "universality.sha256"  # safetensors metadata keys


def save_moments(acc: MomentAccumulator, directory: str | Path, *, extra: dict | None = None) -> None:
    """Write `acc` (and `extra`, JSON-able) into `directory/state.safetensors`, atomically as a whole."""
    directory = Path(directory)
    tensors = {f"mean/{m}": v for m, v in acc.mean_.items()}
    tensors |= {f"cross/{m}": c for m, c in acc.cross_.items()}
    tensors |= {f"gram/{m}/{s}": g for m, sets in acc.gram_.items() for s, g in sets.items()}
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    manifest = {
        **(extra or {}),
        "layout": [[m, list(sets.items())] for m, sets in acc.layout.items()],
        "dtype": acc.dtype, "count": acc.count_, "batches": acc.batches_,
    }
    text = json.dumps(manifest, sort_keys=True)
    metadata = {_MANIFEST_KEY: text, _CHECKSUM_KEY: _checksum(text, sorted(tensors), tensors.__getitem__)}
    replace_atomically(directory / _STATE, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_manifest(directory: str | Path) -> dict | None:
    """The manifest of the saved moments, or None when there is no intact state (missing, truncated,
    unparsable, or its checksum differs): the caller then recomputes. Tensors are hashed one at a time."""
    path = Path(directory) / _STATE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            text = metadata[_MANIFEST_KEY]
            if _checksum(text, sorted(file.keys()), file.get_tensor) != metadata[_CHECKSUM_KEY]:
                return None
            manifest = json.loads(text)
            _layout(manifest)
    except Exception:  # noqa: BLE001 - any failure to decode untrusted bytes means: no usable state
        return None
    return manifest


def load_moments(directory: str | Path, *, device: str = "cpu") -> tuple[MomentAccumulator, dict]:
    """Read moments saved by `save_moments`; returns the accumulator and its manifest.
    A missing or damaged state raises `UniversalityError` (check `read_manifest` first to recompute)."""
    path = Path(directory) / _STATE
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
        tensors = load_file(str(path), device=device)
        text = metadata[_MANIFEST_KEY]
        if _checksum(text, sorted(tensors), tensors.__getitem__) != metadata[_CHECKSUM_KEY]:
            raise ValueError("checksum differs")
        manifest = json.loads(text)
        acc = MomentAccumulator(_layout(manifest), dtype=manifest["dtype"], device=device)
        acc.count_, acc.batches_ = int(manifest["count"]), int(manifest["batches"])
        acc.mean_ = {m: _same_shape(tensors[f"mean/{m}"], v) for m, v in acc.mean_.items()}
        acc.cross_ = {m: _same_shape(tensors[f"cross/{m}"], c) for m, c in acc.cross_.items()}
        acc.gram_ = {m: {s: _same_shape(tensors[f"gram/{m}/{s}"], g) for s, g in sets.items()}
                     for m, sets in acc.gram_.items()}
    except Exception:  # noqa: BLE001 - as in read_manifest: undecodable bytes are no state
        raise UniversalityError(f"no intact saved moments in {str(directory)!r} ({_STATE} missing or damaged); "
                                "run the experiment again to recompute them") from None
    return acc, manifest


def _checksum(manifest_text: str, names: Iterable[str], get: Callable[[str], torch.Tensor]) -> str:
    """sha256 hex of the manifest and, in name order, each tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(manifest_text.encode())
    for name in names:
        tensor = get(name).contiguous()
        digest.update(f"\n{name} {tensor.dtype} {list(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).cpu().numpy())
    return digest.hexdigest()


def _layout(manifest: dict) -> dict[str, dict[str, int]]:
    """{model: {unit_set: units}} from the manifest's `layout` list (raises on any other shape)."""
    return {str(m): {str(s): int(n) for s, n in sets} for m, sets in manifest["layout"]}


def _same_shape(loaded: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """`loaded` copied into `expected` (freshly allocated, aligned memory) after checking shape and dtype.
    Tensors read from a file can sit at unaligned addresses, where BLAS takes other kernels and a
    resumed stream would differ from an uninterrupted one in the last bits."""
    if loaded.shape != expected.shape or loaded.dtype != expected.dtype:
        raise ValueError(f"tensor shape {list(loaded.shape)} differs from the layout's {list(expected.shape)}")
    return expected.copy_(loaded)
