"""The run directory's steps: each experiment kind (`_language`: the synthetic-language demo;
`_groups`: group composition; `_pretrained`: existing models) chains the shared steps of `_steps` (stream into moments with resume,
compare into tables)."""

from ._pretrained import run_pretrained
from ._groups import run_groups
from ._language import run_language
from ._steps import Progress, RunResult, quiet

__all__ = ["run_language", "run_groups", "run_pretrained", "RunResult", "Progress", "quiet"]
