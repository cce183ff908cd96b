"""The run directory's steps: each experiment kind (`_language`, and those that follow) chains the
shared steps of `_steps` (stream into moments with resume, compare into tables)."""

from ._language import run_language
from ._steps import Progress, RunResult, quiet

__all__ = ["run_language", "RunResult", "Progress", "quiet"]
