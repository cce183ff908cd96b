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

from .._rundir import replace_atomically, save_tensors
from ..errors import UniversalityError
from ._accumulator import Block, MomentAccumulator

__all__ = ["save_moments", "load_moments", "read_manifest"]

_STATE = "state.safetensors"
_MANIFEST_KEY, _CHECKSUM_KEY = "universality.manifest", "universality.sha256"  # safetensors metadata keys
_COMPANION = "companion/"  # prefix of the tensors saved beside the moments (returned as manifest["companions"])


def save_moments(acc: MomentAccumulator, directory: str | Path, *, extra: dict | None = None,
                 companions: dict[str, torch.Tensor] | None = None) -> None:
    """Write `acc` (and `extra`, JSON-able, and `companions`: tensors streamed beside the moments, e.g.
    `TopActivations.state_dict()`) into `directory/state.safetensors`, atomically as a whole; `acc`'s
    deferred checks are read first (`MomentAccumulator.check`), so no unchecked batch is saved."""
    acc.check()
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in _tensors(acc).items()}
    tensors |= {f"{_COMPANION}{name}": t.detach().contiguous().cpu() for name, t in (companions or {}).items()}
    manifest = {
        **(extra or {}),
        "layout": [[m, list(sets.items())] for m, sets in acc.layout.items()],
        "dtype": acc.dtype, "count": acc.count_, "batches": acc.batches_,
        "blocks": None if acc.is_default else [list(block) for block in acc.blocks_],
    }
    text = json.dumps(manifest, sort_keys=True)
    metadata = {_MANIFEST_KEY: text, _CHECKSUM_KEY: _checksum(text, sorted(tensors), tensors.__getitem__)}
    replace_atomically(Path(directory) / _STATE, lambda tmp: save_tensors(tmp, tensors, metadata))


def read_manifest(directory: str | Path) -> dict | None:
    """The manifest of the saved moments, or None when there is no intact state (missing, truncated,
    unparsable, or its checksum differs): the caller then recomputes. Tensors are hashed one at a time."""
    try:
        return _read(Path(directory), device=None)[1]
    except Exception:  # noqa: BLE001 - any failure to decode untrusted bytes means: no usable state
        return None


def load_moments(directory: str | Path, *, device: str = "cpu") -> tuple[MomentAccumulator, dict]:
    """Read moments saved by `save_moments`; returns the accumulator and its manifest, whose
    "companions" entry holds the companion tensors by name ({} when none were saved).
    A missing or damaged state raises `UniversalityError` (check `read_manifest` first to recompute)."""
    try:
        return _read(Path(directory), device=device)
    except Exception:  # noqa: BLE001 - as in read_manifest: undecodable bytes are no state
        raise UniversalityError(f"no intact saved moments in {str(directory)!r} ({_STATE} missing or damaged); "
                                "run the experiment again to recompute them") from None


def _read(directory: Path, *, device: str | None) -> tuple[MomentAccumulator | None, dict]:
    """Verify the state file tensor by tensor against its checksum; with a `device`, copy each tensor
    into a new accumulator there (memory: the state plus one tensor). Raises on anything wrong."""
    with safe_open(str(directory / _STATE), framework="pt") as file:
        metadata = file.metadata() or {}
        text = metadata[_MANIFEST_KEY]
        manifest = json.loads(text)
        blocks = manifest["blocks"]
        acc = MomentAccumulator(_layout(manifest), dtype=manifest["dtype"], device=device or "meta",  # meta: no memory
                                blocks=None if blocks is None else [Block(*map(int, b)) for b in blocks])
        targets = _tensors(acc)  # where each saved tensor belongs, with its shape and dtype
        companions = {name: None for name in file.keys() if name.startswith(_COMPANION)}
        if sorted(set(file.keys()) - set(companions)) != sorted(targets):
            raise ValueError("tensor names differ from the layout's")

        def get(name: str) -> torch.Tensor:
            loaded = file.get_tensor(name)
            if name in companions:
                companions[name] = loaded.clone() if device is not None else None
                return loaded
            if loaded.shape != targets[name].shape or loaded.dtype != targets[name].dtype:
                raise ValueError(f"tensor {name!r} differs in shape or dtype from the layout's")
            if device is not None:  # copied into freshly allocated memory: tensors read from a file can sit at
                targets[name].copy_(loaded)  # unaligned addresses, where BLAS rounds differently on resume
            return loaded
        if _checksum(text, sorted([*targets, *companions]), get) != metadata[_CHECKSUM_KEY]:
            raise ValueError("checksum differs")
    acc.count_, acc.batches_ = int(manifest["count"]), int(manifest["batches"])
    manifest["companions"] = {name[len(_COMPANION):]: t for name, t in companions.items() if t is not None}
    return (acc if device is not None else None), manifest


def _tensors(acc: MomentAccumulator) -> dict[str, torch.Tensor]:
    """The accumulator's state tensors by saved name: mean/<m>, block/<rows>/<columns> (`Block.name`)."""
    tensors = {f"mean/{m}": v for m, v in acc.mean_.items()}
    return tensors | {f"block/{block.name}": value for block, value in acc.blocks_.items()}


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
