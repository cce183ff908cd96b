"""The representation-similarity step of every run kind: each unit set of one model against each
unit set of every other model (`similarity.similarity_table`).

The state metrics come from the compared state, which holds the cross-moments only after a one-pass
exact comparison (a multi-pass plan or a sketch reduces them as they stream): otherwise the step is
left out with a note. Debiased CKA, mutual k-NN and the token-shuffled null of every score come from
the reservoir of token rows (`similarity.Reservoir`) that the same pass kept (`_planned`): its size is
checked against the stream before anything is written (`reservoir_rows`). A stream that keeps no
reservoir (Ray workers) gives the state metrics with NaN nulls and a note. Pairs inside one model
(layer x layer) need blocks a run does not accumulate: `universality.compare_representations` has them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._defaults import RESERVOIR_ROWS
from .._rundir import fingerprint, read_step_manifest
from ..compare import Comparison
from ..config import SimilarityConfig
from ..errors import UniversalityError
from ..similarity._table import TOKEN_METRICS, similarity_table
from ._steps import table_step

__all__ = ["similarity_step", "compared_print", "reservoir_rows"]


def compared_print(run_dir: Path) -> str:
    """The fingerprint the compare step's tables were made with (its inputs: the streamed state and
    the compare settings), read from their intact manifest; "" when there is none."""
    manifest = read_step_manifest(run_dir / "tables", name="compare.json")
    return "" if manifest is None else manifest["fingerprint"]


def reservoir_rows(settings: SimilarityConfig, stream_tokens: int) -> int | None:
    """Token rows the run's pass keeps for `settings` over a stream of `stream_tokens` tokens ("auto":
    min(RESERVOIR_ROWS, stream)); None when no metric or null needs them. One line for a reservoir
    larger than the stream, or too small for its metrics (called before anything is written)."""
    if not settings.enabled or not _needs_rows(settings):
        return None
    if settings.reservoir != "auto" and settings.reservoir > stream_tokens:
        raise UniversalityError(f"similarity.reservoir = {settings.reservoir} rows, but the run streams "
                                f"{stream_tokens} tokens; set reservoir to at most {stream_tokens}, or \"auto\"")
    rows = min(RESERVOIR_ROWS, stream_tokens) if settings.reservoir == "auto" else settings.reservoir
    if rows < 4:
        raise UniversalityError(f"the run streams {stream_tokens} tokens; debiased_cka, mutual_knn and the nulls "
                                "need at least 4 reservoir rows: stream more tokens, or set similarity.nulls = 0 "
                                "with state metrics only")
    if "mutual_knn" in settings.metrics and settings.k >= rows:
        raise UniversalityError(f"similarity.k = {settings.k} neighbours need more than {settings.k} reservoir rows "
                                f"(a row is not its own neighbour), the reservoir keeps {rows}; lower k or raise "
                                "reservoir")
    return rows


def _needs_rows(settings: SimilarityConfig) -> bool:
    """Whether a metric or the nulls of `settings` read reservoir rows."""
    return bool(settings.nulls or set(settings.metrics) & set(TOKEN_METRICS))


def similarity_step(run_dir: Path, comparison: Comparison, settings: SimilarityConfig, inputs_print: str,
                    rows: dict | None) -> tuple[pd.DataFrame | None, list[str]]:
    """(`tables/similarity.parquet`: model_a, unit_set_a, model_b, unit_set_b, metric, value, null_mean,
    null_std; or None) and notes (one line per part left out). `rows`: the reservoir's
    {model: {unit_set: float32 [rows, units]}}, or None when the pass kept none."""
    if not settings.enabled:
        return None, []
    if not comparison.moments.is_default:
        return None, ["representation similarity left out: the comparison ran in several passes or as a sketch, "
                      "so its state no longer holds the cross-moments"]
    metrics, nulls, notes = tuple(settings.metrics), settings.nulls, []
    if rows is None and _needs_rows(settings):
        metrics, nulls = tuple(m for m in metrics if m not in TOKEN_METRICS), 0
        notes = ["debiased_cka, mutual_knn and the similarity nulls left out: this stream kept no reservoir of "
                 "token rows (Ray workers stream their own shards)"]
    step_print = fingerprint(inputs=inputs_print, similarity=settings.model_dump(), reservoir=rows is not None)

    def compute() -> dict[str, pd.DataFrame]:
        return {"similarity": similarity_table(comparison.moments, rows, metrics=metrics, k=settings.k,
                                               ridge=settings.ridge, seed=settings.seed, nulls=nulls,
                                               within_models=False)}
    if not metrics:
        return None, notes
    return table_step(run_dir / "tables", "similarity", step_print, compute)["similarity"], notes
