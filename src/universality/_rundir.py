"""The run directory's edges: atomic writes, step fingerprints, the resolved config with provenance.

runs/<name>/
  config.toml          resolved config + [provenance] (package versions, git revision)
  models/seed-<k>/     weights.safetensors + metadata.json (fingerprint, training curve)
  moments/             state.safetensors: tensors, manifest and checksum in one file (one rename commits it)
  tables/              units.parquet, pairs.parquet, layers.parquet, manifest.json ({file: sha256})
  plots/, report.html
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import re
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pandas as pd
import tomli_w

from .errors import UniversalityError, short_repr

__all__ = ["seed_name", "fingerprint", "write_text_atomic", "write_parquet_atomic", "write_bytes_atomic",
           "replace_atomically", "file_digest", "save_tensors", "write_step_manifest", "read_step_manifest",
           "check_run_name", "provenance", "read_json", "resolved_config_text"]

STEP_MANIFEST = "manifest.json"  # in each step's directory: fingerprint + {file: sha256}
MAX_NAME = 100  # characters in a run name
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_BLOCK = 1 << 20  # bytes read at a time when hashing


def seed_name(seed: int, prefix: str = "") -> str:
    """The name of a trained seed's model, and of its directory under `models/`: "seed-<k>", or
    "<prefix>seed-<k>" when a run trains several architectures."""
    return f"{prefix}seed-{seed}"


def fingerprint(**inputs) -> str:
    """A short stable hash of a step's inputs (plain JSON-able values)."""
    from . import __version__
    text = json.dumps({"version": __version__, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_text_atomic(path: Path, text: str) -> str:
    """Write `text` (UTF-8) to `path` atomically; returns the sha256 hex of the bytes written."""
    return write_bytes_atomic(path, text.encode())


def write_parquet_atomic(path: Path, frame: pd.DataFrame) -> str:
    """Write `frame` as parquet (no index) to `path` atomically; returns the sha256 hex of the file."""
    return replace_atomically(Path(path), lambda tmp: frame.to_parquet(tmp, index=False))


def write_bytes_atomic(path: Path, data: bytes) -> str:
    """Write `data` to `path` atomically; returns its sha256 hex."""
    return replace_atomically(Path(path), lambda tmp: tmp.write_bytes(data))


def save_tensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, with its I/O failures (disk full, read-only) raised as `OSError`
    like every other write, so the CLI reports them in one line."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as error:
        raise OSError(f"cannot write {path.name}: {error}") from None


def replace_atomically(path: Path, write: Callable[[Path], object]) -> str:
    """Replace `path` by what `write(tmp)` writes, as a whole; returns the sha256 hex of the new file.

    1. `write(tmp)` into a unique sibling `.name.tmp-<pid>`; 2. fsync it and hash it;
    3. `before_replace(tmp, path)` (a no-op; tests make it crash there); 4. rename it over `path`.
    A reader sees the old file or the new one, never a mix. On any failure (disk full, an exception
    raised by a signal handler) the temporary file is removed; one left by SIGKILL is removed by the
    next successful write of `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        digest = _fsync_and_digest(tmp)
        before_replace(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _remove_stale_temporaries(path)
    return digest


def _remove_stale_temporaries(path: Path) -> None:
    """Delete `.name.tmp-<pid>` siblings of `path` left by killed processes (pid no longer running)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = stale.name.rpartition("-")[2]
        if pid.isdigit() and not _running(int(pid)):
            stale.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process (alive) / not a pid
        return True
    return True


def before_replace(tmp: Path, path: Path) -> None:
    """Called between writing `tmp` and renaming it over `path`: the crash window tests aim at."""


def _fsync_and_digest(path: Path) -> str:
    """Flush `path` to disk and return the sha256 hex of its bytes."""
    digest = hashlib.sha256()
    with open(path, "rb+") as file:
        for block in iter(lambda: file.read(_BLOCK), b""):
            digest.update(block)
        os.fsync(file.fileno())
    return digest.hexdigest()


def file_digest(path: Path) -> str | None:
    """The sha256 hex of the file at `path`, or None when it is missing or unreadable."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(_BLOCK), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def write_step_manifest(directory: Path, fingerprint: str, files: dict[str, str], *, name: str = STEP_MANIFEST,
                        **extra) -> None:
    """Write `directory/<name>` (default manifest.json; several steps may share a directory under
    their own names): the step's `fingerprint`, {file name relative to `directory`: sha256 hex} and
    `extra` (JSON-able). Write it after the files it lists: it marks the step done."""
    manifest = {**extra, "fingerprint": fingerprint, "files": dict(sorted(files.items()))}
    write_text_atomic(Path(directory) / name, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def read_step_manifest(directory: Path, *, name: str = STEP_MANIFEST) -> dict | None:
    """The manifest written by `write_step_manifest`, or None (recompute the step) when it is missing or
    unparsable, or when any file it lists is missing or differs from its recorded sha256."""
    directory = Path(directory)
    manifest = read_json(directory / name)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("fingerprint"), str):
        return None
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(d, str) for d in files.values()):
        return None
    for name, digest in files.items():
        if Path(name).is_absolute() or ".." in Path(name).parts or file_digest(directory / name) != digest:
            return None
    return manifest


def check_run_name(name: str) -> str:
    """`name` when it is a safe run directory name, else `UniversalityError`: 1 to 100 characters out of
    letters, digits, '_', '-' and '.', not starting with '.' (so never '.', '..', hidden or a path)."""
    if not isinstance(name, str):
        raise UniversalityError(f"run name must be a string, got {short_repr(name)}")
    if not name or len(name) > MAX_NAME:
        raise UniversalityError(f"run name {short_repr(name)} has {len(name)} characters; use 1 to {MAX_NAME}")
    if not _NAME.fullmatch(name) or name.startswith("."):
        raise UniversalityError(f"run name {short_repr(name)} is not a plain directory name; use letters, digits, "
                                "'_', '-' and '.' (not first), e.g. 'demo-2'")
    return name


def read_json(path: Path) -> dict | None:
    """The JSON object at `path`, or None when it is missing or unreadable (an interrupted write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
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
