"""The grid of jobs of one pass (token shards), and the board that records each job's result once.

A job is (pass index, batch range [start, stop)). A failed job (its worker died, or it raised) runs
again, at most `RETRIES` more times; a job's result is recorded once by its key, so a job that ran
twice (a retry of a job whose first run did finish, which Ray cannot always tell: "the task may or
may not have been executed") never adds its tokens twice.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import UniversalityError

__all__ = ["Job", "shard_jobs", "JobBoard", "RETRIES"]

RETRIES = 2  # a failed job runs again at most twice (three attempts in all)


class Job(NamedTuple):
    """One shard of one pass: batches [start, stop) of the stream, accumulated into pass `pass_index`."""
    pass_index: int
    start: int
    stop: int

    def describe(self, passes: int) -> str:
        """"pass 2 of 3, batches 4..7" (no pass in a one-pass plan; "batch 4" for one batch)."""
        where = f"pass {self.pass_index + 1} of {passes}, " if passes > 1 else ""
        span = f"batch {self.start}" if self.stop - self.start == 1 else f"batches {self.start}..{self.stop - 1}"
        return where + span


def shard_jobs(pass_index: int, batch_count: int, shards: int) -> list[Job]:
    """`shards` jobs (fewer when there are fewer batches) covering batches [0, batch_count) of pass
    `pass_index` in contiguous ranges whose sizes differ by at most one.

    >>> [(job.start, job.stop) for job in shard_jobs(0, 10, 3)]
    [(0, 3), (3, 6), (6, 10)]
    """
    shards = max(1, min(shards, batch_count))
    bounds = [batch_count * k // shards for k in range(shards + 1)]
    return [Job(pass_index, start, stop) for start, stop in zip(bounds, bounds[1:])]


class JobBoard:
    """Which jobs of a pass are still to run, their attempts, and each one's result, recorded once.

    Parameters
    ----------
    jobs : list of Job
        The jobs to run, in shard order (the order `results` returns them).
    passes : int
        Passes of the plan (for messages).
    retries : int, default=RETRIES
        Further attempts of a failed job.
    """

    def __init__(self, jobs: list[Job], passes: int, retries: int = RETRIES):
        self.jobs, self.passes, self.retries = list(jobs), passes, retries
        self.waiting = list(jobs)  # to submit, next first
        self.attempts = dict.fromkeys(jobs, 0)
        self._results: dict[Job, Any] = {}

    def next(self) -> Job | None:
        """The next job to submit (counted as an attempt), or None when none waits."""
        if not self.waiting:
            return None
        job = self.waiting.pop(0)
        self.attempts[job] += 1
        return job

    def record(self, job: Job, result: Any) -> bool:
        """Keep `result` as `job`'s unless one is already kept; returns whether it was kept."""
        if job in self._results:
            return False
        self._results[job] = result
        return True

    def failed(self, job: Job, error: str) -> None:
        """`job`'s attempt failed: queue it again, or raise one line once its retries are spent (a job whose
        result was kept by another attempt meanwhile needs no retry)."""
        if job in self._results or job in self.waiting:
            return
        if self.attempts[job] > self.retries:
            raise UniversalityError(f"{job.describe(self.passes)} failed {self.attempts[job]} times, last: {error}")
        self.waiting.append(job)

    @property
    def finished(self) -> bool:
        return len(self._results) == len(self.jobs)

    def results(self) -> list:
        """Each job's result, in the order of `jobs` (all must be recorded)."""
        return [self._results[job] for job in self.jobs]
