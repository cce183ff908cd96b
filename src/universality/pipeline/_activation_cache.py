"""An on-disk cache of the streamed activations, so the passes after the first of a memory-budgeted
plan read batches back instead of running the models again.

The rule (`[scale] activation_cache`): "auto" caches when the plan has more than one pass and the
whole stream (tokens x all units x 4 bytes, float32) takes at most half the free space of the cache
directory; "none" never caches (every pass re-runs the models); a directory path caches there
(checked writable before the first batch). Reading a batch back costs its bytes at disk speed; the
forward passes it replaces cost 4-5% of the cross-moment GEMMs per token on this CPU at GPT-2-small
shapes, paid once per pass (README, "Scale"): a 7-pass plan saves about a quarter of its time. At the
reference study's size (100M tokens x 184k units, 74 TB) no cache fits and the models are re-run. One safetensors file per batch, written atomically; the cache
is removed when the comparison is done.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from safetensors.torch import load_file

from .._rundir import replace_atomically, save_tensors
from ..errors import UniversalityError

__all__ = ["ActivationCache", "choose_cache"]


class ActivationCache:
    """Batches `{model: {unit_set: Tensor[tokens, units]}}` as `directory/batch-<k>.safetensors`."""

    def __init__(self, directory: Path, total: int):
        self.directory, self.total = directory, total

    def _path(self, index: int) -> Path:
        return self.directory / f"batch-{index}.safetensors"

    def complete(self) -> bool:
        """Every batch of the stream is cached (a pass can read them all)."""
        return all(self._path(k).is_file() for k in range(self.total))

    def write(self, index: int, batch: dict) -> None:
        tensors = {f"{m}\x1f{s}": x.detach().contiguous().cpu() for m, sets in batch.items() for s, x in sets.items()}
        replace_atomically(self._path(index), lambda tmp: save_tensors(tmp, tensors))

    def read(self, start: int) -> Iterator[dict]:
        """The cached batches from `start` on, in order."""
        for index in range(start, self.total):
            batch: dict = {}
            for name, x in load_file(str(self._path(index))).items():
                model, unit_set = name.split("\x1f")
                batch.setdefault(model, {})[unit_set] = x
            yield batch

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def choose_cache(setting: str, run_dir: Path, passes: int, total: int, batch_bytes: int) -> ActivationCache | None:
    """The cache a run uses under `setting` (module docstring), or None."""
    if setting == "none" or passes == 1:
        return None
    directory = run_dir / "activation_cache" if setting == "auto" else Path(setting)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".writable"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        if setting == "auto":
            return None
        raise UniversalityError(f"activation_cache directory {setting!r} is not writable ({error.strerror}); give "
                                "a writable directory, or activation_cache = \"none\" to re-run the models") from None
    if setting == "auto" and total * batch_bytes > shutil.disk_usage(directory).free / 2:
        return None
    return ActivationCache(directory, total)

