"""The run directory's steps. Each experiment kind (`_language`: the synthetic-language demo;
`_groups`: group composition; `_pretrained`: existing models) chains the shared steps of `_steps`
(train or load seeds, tables skipped when made from the same inputs), `_planned` (stream and compare
within the memory budget, pass by pass, with resume; `_dry_plan` shows the plan first) and `_neurons`, runs them in a staging directory and commits it (`_run`,
`_run_directory`), and ends with the report built from what it holds in memory (`_report`)."""

from ._dry_plan import experiment_plan
from ._groups import run_groups
from ._language import run_language
from ._pretrained import run_pretrained
from ._report import RunRecord, load_run, report_step
from ._steps import Progress, RunResult, quiet

__all__ = ["run_language", "run_groups", "run_pretrained", "RunResult", "RunRecord", "Progress", "quiet",
           "load_run", "report_step", "experiment_plan"]
