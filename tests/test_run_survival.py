"""Runs that survive anything: random SIGKILLs resume to bit-identical tables, a commit cut short
is finished or undone, damaged files are recomputed, a full disk and a read-only finished run
leave the earlier run byte-identical with one line of explanation.

Every run here goes through the CLI in a subprocess (`univ run`), on a tiny language config.
"""

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from universality.pipeline._run_directory import RUN_FILE, open_run

TINY = """
name = "tiny"
seeds = [0, 1]
[language]
seq_len = 16
n_classes = 4
tokens_per_class = 4
repeat_len = 4
[model]
d_model = 16
n_layers = 1
n_heads = 2
d_mlp = 32
activation = "relu"
[train]
steps = 30
batch_size = 8
log_every = 10
threads = 1
[collect]
rows = 64
batch_rows = 8
"""
_ENV = {**os.environ, "UNIVERSALITY_CHECKPOINT_SECONDS": "0", "COLUMNS": "200"}  # save after every batch


def _command(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "universality.cli", *args]


def _univ(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(root, *args), cwd=root, capture_output=True, text=True, timeout=600, env=_ENV)


def _results(run: Path) -> dict:
    """Every table and every moment tensor of a finished run."""
    out = {f"table {p.stem}": pd.read_parquet(p) for p in sorted((run / "tables").glob("*.parquet"))}
    out |= {f"moments {k}": v for k, v in load_file(str(run / "moments" / "state.safetensors")).items()}
    return out


def _assert_identical(run: Path, reference: dict) -> None:
    results = _results(run)
    assert results.keys() == reference.keys()
    for key, value in reference.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(results[key], value, check_exact=True, obj=key)
        else:
            assert torch.equal(results[key], value), key


def _snapshot(run: Path) -> dict:
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean run of TINY: (directory holding tiny.toml, the run, its results, seconds it took)."""
    root = tmp_path_factory.mktemp("clean")
    (root / "tiny.toml").write_text(TINY)
    start = time.perf_counter()
    done = _univ(root, "run", "tiny.toml", "--runs-dir", "runs")
    assert done.returncode == 0, done.stderr
    run = root / "runs" / "tiny"
    return root, run, _results(run), time.perf_counter() - start


def test_twenty_random_kills_resume_to_bit_identical_results(clean, tmp_path):
    root, _, reference, seconds = clean
    (tmp_path / "tiny.toml").write_text(TINY)
    rng = random.Random(0)
    kills = attempt = 0
    while kills < 20:
        attempt += 1
        runs = tmp_path / f"runs-{attempt}"
        while True:  # kill this run until it gets through, then check it
            process = subprocess.Popen(_command(tmp_path, "run", "tiny.toml", "--runs-dir", str(runs)), cwd=tmp_path,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_ENV)
            # after the 20th kill the run finishes: on a loaded machine a step can outlast every timer (a livelock)
            timeout = rng.uniform(0.2, seconds) if kills < 20 else None
            try:
                _, stderr = process.communicate(timeout=timeout)
                assert process.returncode == 0, stderr
                break
            except subprocess.TimeoutExpired:
                process.kill()  # SIGKILL: no cleanup runs
                process.communicate()
                kills += 1
        _assert_identical(runs / "tiny", reference)


def test_a_commit_cut_short_is_finished_or_undone(clean, tmp_path):
    _, run, reference, _ = clean
    for staged_complete in (True, False):
        runs = tmp_path / f"runs-{staged_complete}"
        shutil.copytree(run, runs / "tiny")
        staging, old = runs / ".tiny.staging", runs / ".tiny.old"
        shutil.copytree(run, staging)
        (staging / "marker").write_text("new")
        if not staged_complete:
            (staging / RUN_FILE).unlink()
        os.replace(runs / "tiny", old)  # the kill lands between commit's two renames
        open_run(runs, "tiny").release()
        assert (runs / "tiny").is_dir() and not old.exists()
        assert (runs / "tiny" / "marker").is_file() == staged_complete  # the new run, or the old one back
        _assert_identical(runs / "tiny", reference)


@pytest.mark.parametrize("damage", ["flip a table byte", "truncate weights", "garbage moments", "garbage manifest"])
def test_damaged_files_are_recomputed_to_the_same_results(clean, tmp_path, damage):
    root, run, reference, _ = clean
    runs = tmp_path / "runs"
    shutil.copytree(run, runs / "tiny")
    target = {"flip a table byte": "tables/units.parquet", "truncate weights": "models/seed-1/weights.safetensors",
              "garbage moments": "moments/state.safetensors", "garbage manifest": "tables/compare.json"}[damage]
    path = runs / "tiny" / target
    data = bytearray(path.read_bytes())
    if damage == "flip a table byte":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate weights":
        data = data[:len(data) // 3]
    else:
        data = bytearray(b"\x00garbage" * 8)
    path.write_bytes(bytes(data))
    (tmp_path / "tiny.toml").write_text(TINY)
    done = _univ(tmp_path, "run", "tiny.toml", "--runs-dir", "runs")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    _assert_identical(runs / "tiny", reference)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    if not _mount_tmpfs(mount, "6m"):
        pytest.skip("a small tmpfs needs root and mount (full-disk and read-only tests)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_leaves_the_earlier_run_intact_and_no_temporaries(clean, tmpfs):
    _, run, _, _ = clean
    shutil.copytree(run, tmpfs / "runs" / "tiny")
    before = _snapshot(tmpfs / "runs" / "tiny")
    filler = tmpfs / "filler"
    free = shutil.disk_usage(tmpfs).free
    filler.write_bytes(b"\0" * max(free - 300_000, 0))  # leave less than the new run needs
    bigger = TINY.replace("seeds = [0, 1]", "seeds = [0, 1, 2, 3]").replace("d_mlp = 32", "d_mlp = 256")
    (tmpfs / "tiny.toml").write_text(bigger)
    done = _univ(tmpfs, "run", "tiny.toml", "--runs-dir", "runs")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]  # after the progress bars
    assert len(errors) == 1 and "no space left" in errors[0].lower(), done.stderr
    assert _snapshot(tmpfs / "runs" / "tiny") == before
    assert not [p for p in (tmpfs / "runs").rglob("*") if ".tmp" in p.name]


def test_a_read_only_finished_run_runs_again_and_reports_in_one_line(clean, tmpfs):
    root, run, _, _ = clean
    shutil.copytree(run, tmpfs / "runs" / "tiny")
    (tmpfs / "tiny.toml").write_text(TINY)
    before = _snapshot(tmpfs / "runs" / "tiny")
    assert subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True).returncode == 0
    done = _univ(tmpfs, "run", "tiny.toml", "--runs-dir", "runs")
    assert done.returncode == 0 and "universal" in done.stderr, done.stderr
    report = _univ(tmpfs, "report", "runs/tiny")
    assert report.returncode == 2 and len(report.stderr.strip().splitlines()) == 1, report.stderr
    assert "Traceback" not in report.stderr and "read-only" in report.stderr.lower(), report.stderr
    assert _snapshot(tmpfs / "runs" / "tiny") == before
