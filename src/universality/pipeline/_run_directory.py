"""The run directory as one unit of commit: a run works in a staging copy and replaces the
finished run only when it has succeeded, so a run that fails (bad input found mid-run, a full
disk, a kill) leaves the last finished run of that name exactly as it was.

    runs/<name>/              the last finished run; a run in progress never writes here
    runs/.<name>.staging/     the run in progress: at first hard links to every file of the
                              finished run, each replaced as a step writes it (every write is a
                              temporary file + os.replace, never in place, so the links stay intact)
    runs/.<name>.old/         the finished run, for an instant during `commit`
    runs/.<name>.lock         the process that owns the staging directory

1. `open_run` recovers from a commit cut short, takes the lock, and makes the staging directory,
   or keeps the one an interrupted run left (the resumed run starts from its progress).
2. The steps read and write `RunDirectory.work` only.
3. `commit` writes `run.json` (the run's fingerprint) into the staging directory, renames the
   finished run aside, renames the staging directory into place and deletes the old run.
   A kill between the two renames is finished by the next `open_run`: a staging directory with
   `run.json` is complete and goes into place; without it the old run goes back.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .._rundir import read_json, write_text_atomic
from ..errors import UniversalityError

__all__ = ["RunDirectory", "open_run", "finished_run_print", "RUN_FILE"]

RUN_FILE = "run.json"  # written last into a complete run: {"fingerprint": ...}


@dataclass
class RunDirectory:
    final: Path  # runs/<name>
    work: Path  # runs/.<name>.staging
    lock: Path

    def commit(self, run_print: str) -> None:
        """Put the staged run in place of the finished one (numbered steps in the module docstring)."""
        old = self.final.with_name(f".{self.final.name}.old")
        _remove_temporaries(self.work)
        write_text_atomic(self.work / RUN_FILE, json.dumps({"fingerprint": run_print}))
        shutil.rmtree(old, ignore_errors=True)
        if self.final.exists():
            os.replace(self.final, old)
        os.replace(self.work, self.final)
        shutil.rmtree(old, ignore_errors=True)
        self.release()

    def release(self) -> None:
        """Give up the lock (the staging directory stays, to resume from)."""
        self.lock.unlink(missing_ok=True)


def finished_run_print(runs_dir: str | Path, name: str) -> str | None:
    """The fingerprint in `runs_dir/<name>/run.json` of a finished run, or None."""
    saved = read_json(Path(runs_dir) / name / RUN_FILE)
    return saved.get("fingerprint") if saved else None


def open_run(runs_dir: str | Path, name: str) -> RunDirectory:
    """Recover, lock and stage `runs_dir/<name>` (see the module docstring); call it only after
    every check that needs no data, so that bad input never touches the runs directory."""
    runs_dir = Path(runs_dir)
    final = runs_dir / name
    if final.exists() and not final.is_dir():
        raise UniversalityError(f"run directory {str(final)!r} exists and is not a directory; "
                                "choose another name or --runs-dir")
    runs_dir.mkdir(parents=True, exist_ok=True)
    run = RunDirectory(final, runs_dir / f".{name}.staging", runs_dir / f".{name}.lock")
    _take_lock(run.lock)
    try:
        _recover(run)
        if not run.work.exists():
            _stage(final, run.work)
        _remove_temporaries(run.work)
    except BaseException:
        run.release()
        raise
    return run


def _take_lock(lock: Path) -> None:
    """Create `lock` holding this pid; a lock whose process is gone is taken over."""
    for _ in range(2):
        try:
            with open(lock, "x") as handle:
                handle.write(str(os.getpid()))
            return
        except FileExistsError:
            try:
                owner = int(lock.read_text() or "0")
            except (OSError, ValueError):
                owner = 0
            if owner and owner != os.getpid() and _alive(owner):
                raise UniversalityError(f"run {lock.name[1:-5]!r} is being written by process {owner}; "
                                        "wait for it or stop it") from None
            lock.unlink(missing_ok=True)
    raise UniversalityError(f"cannot lock {str(lock)!r}; remove it if no run of that name is going")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover(run: RunDirectory) -> None:
    """Finish or undo a commit that a kill cut short."""
    old = run.final.with_name(f".{run.final.name}.old")
    if not old.exists():
        return
    if not run.final.exists():
        if (run.work / RUN_FILE).is_file():
            os.replace(run.work, run.final)  # the staged run was complete
        else:
            os.replace(old, run.final)
    shutil.rmtree(old, ignore_errors=True)


def _stage(final: Path, work: Path) -> None:
    """`work` as a tree of hard links to `final`'s files (copies where links are refused), without
    `run.json`: the staged run is complete only when it commits."""
    partial = work.with_name(work.name + ".tmp")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if final.is_dir():
        for source in sorted(final.rglob("*")):
            target = partial / source.relative_to(final)
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif source.is_file() and source.name != RUN_FILE:
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copy2(source, target)
    os.replace(partial, work)


def _remove_temporaries(work: Path) -> None:
    """Temporary files and directories a killed write left behind (`.<name>.tmp*`, `.<name>.old-*`)."""
    if not work.is_dir():
        return
    for path in sorted(work.rglob(".*"), reverse=True):
        if ".tmp" in path.name or ".old-" in path.name:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
