"""The CLI edge: bad configs, file-system faults and Ctrl-C are one plain line (exit 2, 130 for Ctrl-C),
never a traceback, never rich markup, and a finished run of the same name stays byte-identical."""

import errno
import hashlib
import io
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import tomli_w
import typer
from hypothesis import HealthCheck, given, settings
from test_config_validation import LANGUAGE, mutated_configs
from typer.testing import CliRunner

from universality import UniversalityError
from universality.cli import _user_errors, app
from universality.config import load_config, parse_config


def _univ(*args, cwd: Path, columns: int = 200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "universality.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run `runs/tiny` (2 seeds, 4 training steps), built once for this module."""
    from universality.api import run_experiment
    root = tmp_path_factory.mktemp("cli")
    run_experiment(parse_config(LANGUAGE), runs_dir=root / "area" / "runs")
    return root / "area" / "runs" / "tiny"


def _bad_config_files(count: int) -> list[bytes]:
    """`count` generated configs that the validation refuses, as TOML files, and some broken files."""
    chosen: list[bytes] = []

    @settings(max_examples=400, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated_configs())
    def pick(case):
        data, _ = case
        if len(chosen) >= count - 4:
            return
        try:
            text = tomli_w.dumps(data).encode()
            parse_config(data)
        except UniversalityError:
            chosen.append(text)
        except (TypeError, ValueError, RecursionError):  # tomli_w cannot write it (None, deep nesting)
            pass
    pick()
    base = tomli_w.dumps(LANGUAGE).encode()
    return chosen + [base + b'\n# caf\xe9\n', base + b"\nx = " + b"[" * 3000 + b"]" * 3000,
                     base.replace(b'"tiny"', b'".."'), base.replace(b"[train]", b"[train]\nlr = inf")]


def test_fuzzed_bad_configs_through_the_cli_fail_in_one_line_and_leave_the_run_intact(finished_run, tmp_path):
    area = finished_run.parent.parent  # the runs directory and its parent, where name = ".." would write
    before = _hashes(area)
    files = []
    for index, text in enumerate(_bad_config_files(30)):
        files.append(tmp_path / f"bad-{index}.toml")
        files[-1].write_bytes(text)
        with pytest.raises(UniversalityError):  # every one is refused in-process: the CLI must refuse it too
            load_config(files[-1])
    assert len(files) >= 30
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda f: _univ("run", str(f), "--runs-dir", str(area / "runs"), cwd=tmp_path), files))
    for path, done in zip(files, results):
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (path.read_bytes()[:300], done.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    assert _hashes(area) == before


def test_error_text_is_printed_literally_never_as_markup(capsys):
    for message in ("unit set '[/bold]' matches nothing", "name must match '^[A-Za-z0-9_.-]+$'", "[red]x[/red]"):
        with pytest.raises(typer.Exit) as exit_:
            with _user_errors():
                raise UniversalityError(message)
        assert exit_.value.exit_code == 2 and capsys.readouterr().err == f"error: {message}\n"


def test_a_warning_is_one_plain_line(capsys):
    with _user_errors():
        warnings.warn("threads = 1000 but this process may use 2 cores;\nusing 2 [bold]")
    assert capsys.readouterr().err == "warning: threads = 1000 but this process may use 2 cores; using 2 [bold]\n"


def test_a_markup_like_group_name_prints_literally_through_the_cli(tmp_path):
    done = _univ("groups", "characters", "[/bold]", cwd=tmp_path)
    assert done.returncode == 2 and "'[/bold]'" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("fault, code, text", [
    (OSError(errno.ENOSPC, "No space left on device", "runs/tiny/tables/units.parquet"), 2, "No space left"),
    (PermissionError(errno.EACCES, "Permission denied", "runs/tiny/config.toml"), 2, "Permission denied"),
    (OSError(errno.EROFS, "Read-only file system", "runs/tiny"), 2, "Read-only file system"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_file_system_faults_and_ctrl_c_are_one_line_at_the_cli_edge(tmp_path, monkeypatch, fault, code, text):
    import universality.api as api

    def fail(*args, **kwargs):
        raise fault
    monkeypatch.setattr(api, "run_experiment", fail)
    (tmp_path / "tiny.toml").write_text(tomli_w.dumps(LANGUAGE))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "tiny.toml"), "--runs-dir", str(tmp_path)])
    assert result.exit_code == code and text in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_runs_dir_below_a_file_is_one_line_exit_2(tmp_path):
    (tmp_path / "tiny.toml").write_text(tomli_w.dumps(LANGUAGE))
    (tmp_path / "afile").write_text("not a directory")
    done = _univ("run", "tiny.toml", "--runs-dir", "afile/runs", cwd=tmp_path)
    assert done.returncode == 2 and "afile" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_summary_prints_the_full_table_when_piped_and_csv_on_request(finished_run, tmp_path):
    done = _univ("summary", str(finished_run), cwd=tmp_path, columns=40)  # a narrow terminal setting: ignored
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["model", "unit_set", "units", "dead", "universal", "pct_universal", "median_excess"]
    assert len(rows) == 2 and all(len(row.split()) == 7 and "blocks.0.mlp.hook_post" in row for row in rows)
    assert max(len(line) for line in done.stdout.splitlines()) > 40
    as_csv = _univ("summary", str(finished_run), "--csv", cwd=tmp_path)
    table = pd.read_csv(io.StringIO(as_csv.stdout))
    saved = pd.read_parquet(finished_run / "tables" / "layers.parquet")
    assert list(table["model"]) == list(saved["model"]) and list(table["universal"]) == list(saved["universal"])


def test_univ_config_shows_threads():
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0 and "\nthreads = 1 " in result.stdout and '"auto"' in result.stdout
