"""The run directory's edges: atomic writes, step fingerprints, the resolved config with provenance.

runs/<name>/
  config.toml          resolved config + [provenance] (package versions, git revision)
  models/seed-<k>/     weights.safetensors + metadata.json (fingerprint, training curve)
  moments/             state.safetensors + manifest.json (fingerprint, batches done, complete)
  tables/              units.parquet, pairs.parquet, layers.parquet, manifest.json
  plots/, report.html
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd
import tomli_w

__all__ = ["file_digest", "fingerprint", "write_text_atomic", "write_parquet_atomic", "provenance", "read_json",
           "resolved_config_text"]


def fingerprint(**inputs) -> str:
    """A short stable hash of a step's inputs (plain JSON-able values)."""
    from . import __version__
    text = json.dumps({"version": __version__, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: Path) -> str | None:
    """sha256 hex of the file at `path`, or None when it is missing or unreadable."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_parquet_atomic(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """The JSON object at `path`, or None when it is missing or unreadable (an interrupted write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def provenance() -> dict[str, str]:
    """Package versions and the git revision of the source tree, for the resolved config."""
    versions = {"python": platform.python_version()}
    for package in ("universality", "torch", "numpy", "pandas", "pyarrow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                  capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = ""
    versions["git_revision"] = revision or "unknown"
    return versions


def resolved_config_text(config_dict: dict) -> str:
    """TOML of the resolved config with a [provenance] table (ignored when the file is read back).
    Unset optional values (None) are left out: TOML has no null, and reading back restores them."""
    return tomli_w.dumps({**_without_none(config_dict), "provenance": provenance()})


def _without_none(value):
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value
