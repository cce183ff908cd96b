"""The features step, after the compare step of every experiment kind: each model pair's one-to-one
assignment and the universal features (`compare.assign_partners`, `compare.universal_features`),
from the one-pass state. Skipped with a note when the state no longer holds the cross-moments (a
multi-pass plan or a sketch reduced them).

| table                     | one row per                          | columns                                     |
|---------------------------|--------------------------------------|---------------------------------------------|
| tables/features.parquet   | universal feature                    | `compare._features` (rule "auto")           |
| tables/assignment.parquet | (model, unit_set, unit, other_model) | `compare._assignment`'s, the unit's feature |

Its fingerprint is the compare step's (fingerprint and file digests) with this step's settings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .._rundir import fingerprint, read_step_manifest
from ..compare import assign_partners, universal_features
from ..compare._assignment import ASSIGNED, CANDIDATES, DENSE_LIMIT
from ..errors import UniversalityError
from ._report import RunRecord
from ._steps import table_step

__all__ = ["feature_step"]

# the paper's rule: calibrated significance joins nearly every unit into one feature (compare/_features.py)
_RULE = "universal"
_KEYS = ["model", "unit_set", "unit"]


def feature_step(run_dir: Path, record: RunRecord) -> RunRecord:
    """`record` with the `features` and `assignment` tables (module docstring), saved in `run_dir/tables`
    as step "features", or with a note saying why they were left out."""
    comparison = record.comparison
    if not comparison.moments.is_default:
        return dataclasses.replace(record, notes=[*record.notes, (
            "universal features and the one-to-one assignment left out: they read the cross-moments, which this "
            "run's plan (several passes, or a sketch) reduced; an exact one-pass plan keeps them")])
    tables_dir = run_dir / "tables"
    compared = read_step_manifest(tables_dir, name="compare.json")
    if compared is None:
        raise UniversalityError(f"{str(tables_dir)!r} holds no intact compare step (compare.json); run the compare "
                                "step before the features step")
    settings = {"rule": _RULE, "dense_limit": DENSE_LIMIT, "candidates": CANDIDATES}
    step_print = fingerprint(compare=compared["fingerprint"], files=compared["files"], features=settings)

    def compute():
        assigned = assign_partners(comparison)
        units, features = universal_features(assigned, rule=_RULE)
        assignment = assigned.pairs[[*_KEYS, "other_model", *ASSIGNED]].merge(units[[*_KEYS, "feature"]],
                                                                               on=_KEYS, how="left")
        return {"features": features, "assignment": assignment}
    tables = table_step(tables_dir, "features", step_print, compute, settings=settings)
    return dataclasses.replace(record, tables={**record.tables, **tables})
