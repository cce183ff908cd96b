"""The representation-similarity step of every run kind: each unit set of one model against each
unit set of every other model (`similarity.similarity_table`), from the compared state alone.

It needs the cross-moments, which only a one-pass exact comparison keeps (a multi-pass plan or a
sketch reduces them as they stream): otherwise it is left out with a note. Pairs inside one model
(layer x layer) need blocks a run does not accumulate, and token-level metrics and nulls a reservoir
of rows it does not keep: `universality.compare_representations` computes both from batches.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._rundir import fingerprint, read_step_manifest
from ..compare import Comparison
from ..config import SimilarityConfig
from ..similarity._table import similarity_table
from ._steps import table_step

__all__ = ["similarity_step", "compared_print"]


def compared_print(run_dir: Path) -> str:
    """The fingerprint the compare step's tables were made with (its inputs: the streamed state and
    the compare settings), read from their intact manifest; "" when there is none."""
    manifest = read_step_manifest(run_dir / "tables", name="compare.json")
    return "" if manifest is None else manifest["fingerprint"]


def similarity_step(run_dir: Path, comparison: Comparison, settings: SimilarityConfig, inputs_print: str
                    ) -> tuple[pd.DataFrame | None, list[str]]:
    """(`tables/similarity.parquet`: model_a, unit_set_a, model_b, unit_set_b, metric, value, null_mean,
    null_std, the nulls NaN; or None) and notes (one line per part left out)."""
    if not settings.enabled:
        return None, []
    if not comparison.moments.is_default:
        return None, ["representation similarity left out: the comparison ran in several passes or as a sketch, "
                      "so its state no longer holds the cross-moments"]
    step_print = fingerprint(inputs=inputs_print, similarity=settings.model_dump())

    def compute() -> dict[str, pd.DataFrame]:
        return {"similarity": similarity_table(comparison.moments, None, metrics=tuple(settings.metrics), k=1,
                                               ridge=settings.ridge, seed=0, nulls=0, within_models=False)}
    return table_step(run_dir / "tables", "similarity", step_print, compute)["similarity"], []
