"""Artifacts that cannot be lost or silently damaged: atomic checksummed writes, step manifests that
catch every flipped byte, moment states committed by one rename (a kill at any point leaves the old
or the new state, and a resumed stream equals the uninterrupted one bit for bit)."""

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import universality._rundir as rundir
from universality import UniversalityError
from universality._rundir import (check_run_name, file_digest, read_step_manifest, write_parquet_atomic,
                                  write_step_manifest, write_text_atomic)
from universality.moments import MomentAccumulator, load_moments, read_manifest, save_moments


class Killed(BaseException):
    """Stands for a kill: raised from the crash hook, caught by nothing in the library but its cleanup."""


def _small_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"model": [f"seed-{i % 3}" for i in range(24)], "unit": np.arange(24),
                         "excess_corr": rng.normal(size=24), "dead": rng.random(24) < 0.2})


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def test_atomic_writes_return_the_sha256_of_the_file_and_leave_no_temporary(tmp_path):
    text_digest = write_text_atomic(tmp_path / "a" / "note.txt", "héllo\n")
    assert text_digest == hashlib.sha256("héllo\n".encode()).hexdigest() == file_digest(tmp_path / "a" / "note.txt")
    table_digest = write_parquet_atomic(tmp_path / "a" / "t.parquet", _small_table())
    assert table_digest == hashlib.sha256((tmp_path / "a" / "t.parquet").read_bytes()).hexdigest()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "t.parquet"), _small_table())
    assert _leftovers(tmp_path / "a") == [] and file_digest(tmp_path / "missing") is None


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), Killed()])
def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch, failure):
    path = tmp_path / "t.parquet"
    old_digest = write_parquet_atomic(path, _small_table())

    def fail_halfway(self, target, **kwargs):
        Path(target).write_bytes(b"PAR1 half a table")
        raise failure
    monkeypatch.setattr(pd.DataFrame, "to_parquet", fail_halfway)
    with pytest.raises(type(failure)):
        write_parquet_atomic(path, _small_table().head(3))
    assert file_digest(path) == old_digest and _leftovers(tmp_path) == []


def test_the_crash_window_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "note.txt"
    write_text_atomic(path, "old")

    def crash(tmp, final):
        assert tmp.read_text() == "new" and final == path
        raise Killed
    monkeypatch.setattr(rundir, "before_replace", crash)
    with pytest.raises(Killed):
        write_text_atomic(path, "new")
    assert path.read_text() == "old" and _leftovers(tmp_path) == []


def test_a_temporary_left_by_sigkill_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".note.txt.tmp-{int(dead.stdout)}"  # that process has exited
    stale.write_text("half")
    live = tmp_path / f".note.txt.tmp-{os.getpid()}x"  # not a pid: left alone
    live.write_text("other")
    write_text_atomic(tmp_path / "note.txt", "new")
    assert not stale.exists() and live.exists()


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="mounting a tmpfs needs root on Linux")
def test_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this container cannot mount a tmpfs")
    try:
        old_digest = write_text_atomic(disk / "note.txt", "old")
        with pytest.raises(OSError) as error:
            write_text_atomic(disk / "note.txt", "x" * 200_000)
        assert error.value.errno == errno.ENOSPC
        assert file_digest(disk / "note.txt") == old_digest and _leftovers(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def _step(tmp_path) -> Path:
    step = tmp_path / "tables"
    files = {"units.parquet": write_parquet_atomic(step / "units.parquet", _small_table()),
             "sub/note.txt": write_text_atomic(step / "sub" / "note.txt", "facts")}
    write_step_manifest(step, "abc123", files, threshold=0.7)
    return step


def test_step_manifest_reads_back_when_every_file_matches(tmp_path):
    manifest = read_step_manifest(_step(tmp_path))
    assert manifest["fingerprint"] == "abc123" and manifest["threshold"] == 0.7
    assert set(manifest["files"]) == {"units.parquet", "sub/note.txt"}


def test_every_single_byte_flip_of_a_table_is_detected(tmp_path):
    step = _step(tmp_path)
    table = step / "units.parquet"
    original = table.read_bytes()
    rng = np.random.default_rng(0)
    ends = [*range(8), *range(len(original) - 8, len(original))]  # parquet's magic and footer length
    sampled = rng.choice(np.arange(8, len(original) - 8), size=600, replace=False)
    for position in [*ends, *sampled.tolist()]:  # 616 of the ~3 kB table's bytes
        damaged = bytearray(original)
        damaged[position] ^= int(rng.integers(1, 256))
        table.write_bytes(bytes(damaged))
        assert read_step_manifest(step) is None, position
    assert len(original) >= 500
    table.write_bytes(original)
    assert read_step_manifest(step) is not None


def test_truncated_missing_or_unparsable_artifacts_mean_recompute(tmp_path):
    step = _step(tmp_path)
    original = (step / "units.parquet").read_bytes()
    for length in (0, 1, len(original) // 2, len(original) - 1):
        (step / "units.parquet").write_bytes(original[:length])
        assert read_step_manifest(step) is None, length
    (step / "units.parquet").write_bytes(original)
    (step / "sub" / "note.txt").unlink()
    assert read_step_manifest(step) is None
    write_text_atomic(step / "sub" / "note.txt", "facts")
    assert read_step_manifest(step) is not None
    manifest_text = (step / "manifest.json").read_text()
    for damaged in (manifest_text[:-5], "[]", '{"fingerprint": 1, "files": {}}', "\xff\xfe",
                    manifest_text.replace("units.parquet", "../units.parquet")):
        (step / "manifest.json").write_text(damaged)
        assert read_step_manifest(step) is None, damaged
    assert read_step_manifest(tmp_path / "nowhere") is None


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "a\\b", ".hidden", "x" * 101, "tab\there", "[/bold]", "a\nb"])
def test_unsafe_run_names_are_refused_in_one_line(name):
    with pytest.raises(UniversalityError) as error:
        check_run_name(name)
    assert "\n" not in str(error.value) and str(error.value).startswith("run name")


def test_plain_run_names_pass():
    for name in ("demo", "demo-2", "s4_mlp.v1", "x" * 100, "A.b-c_9"):
        assert check_run_name(name) == name


# --- moments: one file, one rename -------------------------------------------------------------------

def _batches(count: int, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [{"a": {"mlp": torch.randn(16, 5, generator=generator)},
             "b": {"mlp": torch.randn(16, 4, generator=generator), "attn": torch.randn(16, 2, generator=generator)}}
            for _ in range(count)]


def _state(acc: MomentAccumulator) -> dict:
    tensors = {f"mean/{m}": v for m, v in acc.mean_.items()} | {f"block/{b.name}": c for b, c in acc.blocks_.items()}
    return {"count": acc.count_, "batches": acc.batches_, **tensors}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def _stream(batches, directory: Path, acc: MomentAccumulator | None = None) -> MomentAccumulator:
    """Accumulate `batches` after `acc.batches_`, saving after every batch, as the pipeline does."""
    acc = acc or MomentAccumulator({"a": {"mlp": 5}, "b": {"mlp": 4, "attn": 2}})
    for batch in batches[acc.batches_:]:
        acc.update(batch)
        save_moments(acc, directory, extra={"fingerprint": "f", "complete": acc.batches_ == len(batches)})
    return acc


def test_a_kill_at_any_save_resumes_to_the_uninterrupted_state_bit_for_bit(tmp_path, monkeypatch):
    batches = _batches(6)
    clean = _state(_stream(batches, tmp_path / "clean"))
    for kill_at in range(1, len(batches) + 1):  # the kill_at-th save is cut in its crash window
        directory, snapshot = tmp_path / f"run-{kill_at}", tmp_path / f"disk-{kill_at}"
        saves = []

        def crash(tmp, final, directory=directory, snapshot=snapshot, kill_at=kill_at):
            saves.append(tmp)
            if len(saves) == kill_at:
                shutil.copytree(directory, snapshot)  # the disk as a SIGKILL here would leave it
                (snapshot / tmp.name).write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])  # or mid-write
                raise Killed
        monkeypatch.setattr(rundir, "before_replace", crash)
        with pytest.raises(Killed):
            _stream(batches, directory)
        monkeypatch.setattr(rundir, "before_replace", lambda tmp, final: None)
        manifest = read_manifest(snapshot)
        if kill_at == 1:
            assert manifest is None  # nothing committed yet: start from scratch
            resumed = _stream(batches, snapshot)
        else:  # the old state, complete and consistent: batches done match the tensors
            assert manifest["batches"] == kill_at - 1 and manifest["count"] == 16 * (kill_at - 1)
            acc, _ = load_moments(snapshot)
            assert _same(_state(acc), _state(_stream(batches[: kill_at - 1], tmp_path / f"ref-{kill_at}")))
            resumed = _stream(batches, snapshot, acc)
        assert _same(_state(resumed), clean), kill_at
        assert read_manifest(snapshot)["complete"] is True and _leftovers(snapshot) == []


def test_sigkill_between_write_and_rename_leaves_the_old_state(tmp_path):
    script = f"""
import os, signal, torch
import universality._rundir as rundir
from universality.moments import MomentAccumulator, save_moments
acc = MomentAccumulator({{"a": {{"u": 3}}, "b": {{"u": 2}}}})
acc.update({{"a": {{"u": torch.ones(4, 3).cumsum(0)}}, "b": {{"u": torch.ones(4, 2).cumsum(0) ** 2}}}})
save_moments(acc, {str(tmp_path)!r}, extra={{"step": "old"}})
acc.update({{"a": {{"u": torch.ones(4, 3)}}, "b": {{"u": torch.zeros(4, 2)}}}})
rundir.before_replace = lambda tmp, final: os.kill(os.getpid(), signal.SIGKILL)
save_moments(acc, {str(tmp_path)!r}, extra={{"step": "new"}})
"""
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == -signal.SIGKILL
    assert len(_leftovers(tmp_path)) == 1  # the killed write's temporary
    manifest = read_manifest(tmp_path)
    acc, _ = load_moments(tmp_path)
    assert manifest["step"] == "old" and manifest["batches"] == 1 and acc.count_ == 4


def test_damaged_or_truncated_moment_state_reads_as_missing(tmp_path):
    acc = _stream(_batches(2), tmp_path)
    state = tmp_path / "state.safetensors"
    original = state.read_bytes()
    positions = np.random.default_rng(1).choice(len(original), size=min(len(original), 600), replace=False)
    for position in positions:
        damaged = bytearray(original)
        damaged[position] ^= 0x5A
        state.write_bytes(bytes(damaged))
        assert read_manifest(tmp_path) is None, position
        with pytest.raises(UniversalityError, match="no intact saved moments"):
            load_moments(tmp_path)
    for length in (0, 7, len(original) // 2, len(original) - 1):
        state.write_bytes(original[:length])
        assert read_manifest(tmp_path) is None, length
    state.write_bytes(original)
    assert _same(_state(load_moments(tmp_path)[0]), _state(acc))


def test_a_state_saved_without_its_manifest_inside_reads_as_missing(tmp_path):
    from safetensors.torch import save_file
    save_file({"mean/a": torch.zeros(3, dtype=torch.float64)}, str(tmp_path / "state.safetensors"))
    (tmp_path / "manifest.json").write_text('{"layout": [["a", [["u", 3]]]], "count": 9, "batches": 1}')
    assert read_manifest(tmp_path) is None
