"""Saving and loading moment state: one safetensors file plus a JSON manifest beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..errors import UniversalityError
from ._accumulator import MomentAccumulator

__all__ = ["save_moments", "load_moments", "read_manifest"]

_STATE, _MANIFEST = "state.safetensors", "manifest.json"


def save_moments(acc: MomentAccumulator, directory: str | Path, *, extra: dict | None = None) -> None:
    """Write `acc` into `directory` atomically (temporary names, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"mean/{m}": v for m, v in acc.mean_.items()}
    tensors |= {f"cross/{m}": c for m, c in acc.cross_.items()}
    tensors |= {f"gram/{m}/{s}": g for m, sets in acc.gram_.items() for s, g in sets.items()}
    manifest = {
        "layout": [[m, list(sets.items())] for m, sets in acc.layout.items()],
        "dtype": acc.dtype, "count": acc.count_, "batches": acc.batches_, **(extra or {}),
    }
    tmp_state, tmp_manifest = directory / f".{_STATE}.tmp", directory / f".{_MANIFEST}.tmp"
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp_state))
    tmp_manifest.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp_state, directory / _STATE)
    os.replace(tmp_manifest, directory / _MANIFEST)  # the manifest last: it marks the state complete


def read_manifest(directory: str | Path) -> dict | None:
    """The manifest of saved moments, or None when there are none."""
    path = Path(directory) / _MANIFEST
    return json.loads(path.read_text()) if path.is_file() and (Path(directory) / _STATE).is_file() else None


def load_moments(directory: str | Path, *, device: str = "cpu") -> tuple[MomentAccumulator, dict]:
    """Read moments saved by `save_moments`; returns the accumulator and its manifest."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise UniversalityError(f"no saved moments in {str(directory)!r} (expected {_STATE} and {_MANIFEST})")
    layout = {m: dict((s, int(n)) for s, n in sets) for m, sets in manifest["layout"]}
    acc = MomentAccumulator(layout, dtype=manifest["dtype"], device=device)
    tensors = load_file(str(Path(directory) / _STATE), device=device)
    acc.count_, acc.batches_ = manifest["count"], manifest["batches"]
    acc.mean_ = {m: tensors[f"mean/{m}"] for m in layout}
    acc.cross_ = {m: tensors[f"cross/{m}"] for m in layout}
    acc.gram_ = {m: {s: tensors[f"gram/{m}/{s}"] for s in sets} for m, sets in layout.items()}
    return acc, manifest
