"""Report section: where the paper's rule (excess > threshold) and calibrated universality (q < alpha
against every other model, `compare._calibration`) agree and disagree, with examples of each."""

from __future__ import annotations

import pandas as pd

from ._html import ReportSection

__all__ = ["calibration_sections"]

_EXAMPLES = 5
_COLUMNS = ["model", "unit_set", "unit", "mean_max_corr", "mean_baseline", "excess_corr", "z", "q_value"]


def calibration_sections(units: pd.DataFrame) -> list[ReportSection]:
    """A 2 x 2 table of live units by the two rules, and up to 5 example units per cell where they
    disagree (the largest |z| first); none when `units` has no calibration columns."""
    if "calibrated_universal" not in units:
        return []
    live = units[~units.dead.astype(bool)]
    paper, calibrated = live.universal.astype(bool), live.calibrated_universal.astype(bool)
    table = pd.crosstab(paper.map({True: "paper: universal", False: "paper: not"}),
                        calibrated.map({True: "calibrated: universal", False: "calibrated: not"}))
    table = table.reindex(index=["paper: universal", "paper: not"],
                          columns=["calibrated: universal", "calibrated: not"], fill_value=0)
    tables = [("live units by rule", table.rename_axis(None, axis=1).reset_index(names=""))]
    for caption, cell in (("calibrated only: significant against every other model, excess at or below the "
                           "threshold (often units of narrow or strongly correlated sets, whose baseline is high)",
                           calibrated & ~paper),
                          ("paper only: excess above the threshold, not significant against some other model",
                           paper & ~calibrated)):
        if cell.any():
            examples = live[cell].sort_values("z", key=lambda z: -z.abs(), kind="stable").head(_EXAMPLES)
            tables.append((caption, examples[[c for c in _COLUMNS if c in examples]]))
    return [ReportSection(
        "The paper's rule and calibrated universality",
        text=("Paper: excess correlation (mean max correlation minus the mean rotation baseline) above the "
              "threshold. Calibrated: each unit's max correlation against the maxima of many seeded rotations of "
              "each other model (z, and a p-value from a Gumbel fitted to them), Benjamini-Hochberg q below alpha "
              "against every other model. z and q_value here are the least significant other model's."),
        tables=tables)]
