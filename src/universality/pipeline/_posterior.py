"""The seeds step of every run kind ("seeds as samples of one posterior", `universality.posterior`):
the models' predictive distributions streamed over the run's evaluation data once, pairwise KL,
clusters of seeds by symmetric KL, the mixture's log-loss and regret, and units universal within a
cluster against those universal across all seeds.

The kind's body records what to stream (`Predictions`: the adapters, input rows and the true class at
each position): language runs the next token of the evaluation rows, group runs the product word(a, b)
of every pair, pretrained runs the next token when every model is a decoder with a head (else None,
and the step is left out with a note).

| table                       | one row per      | columns                                                       |
|-----------------------------|------------------|---------------------------------------------------------------|
| tables/seeds.parquet        | model            | cluster, cluster_size, cluster_weight, log_loss, mixture_log_loss, regret |
| tables/seed_kl.parquet      | ordered pair a!=b | model_a, model_b, kl (KL(p_a ‖ p_b)), symmetric_kl, nats per position |
| tables/seed_clusters.parquet | cluster of >= 2 seeds | `posterior.cluster_universality`'s columns                |

Memory per batch: each model's float32 logits [batch_rows, pos, classes] and a float64 chunk of
[models, <= _CHUNK_VALUES / models positions, classes]. Its fingerprint: the body's print of the
models and data, the compare step's, and `[posterior]`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .._rundir import fingerprint
from ..config import PosteriorConfig
from ..posterior import PredictiveSums, cluster_universality, divergences, seed_clusters
from ._report import RunRecord
from ._steps import table_step

__all__ = ["Predictions", "next_token", "posterior_step"]

_CHUNK_VALUES = 1 << 24  # float64 log-probabilities per chunk (128 MiB)


@dataclass(frozen=True)
class Predictions:
    """What the seeds step streams: `adapters` {model: ModelAdapter with `logits`}, `inputs` int64 [rows,
    pos] and `targets` int64 [rows, pos] (the true class after each input position), `batch_rows` rows
    per forward pass, and `inputs_print`, a fingerprint of the models and the data."""

    adapters: dict
    inputs: torch.Tensor
    targets: torch.Tensor
    batch_rows: int
    inputs_print: str


def next_token(adapters: dict, tokens: torch.Tensor, batch_rows: int, inputs_print: str) -> Predictions:
    """Next-token prediction on token rows [rows, seq_len]: inputs [:, :-1], targets [:, 1:]."""
    return Predictions(adapters, tokens[:, :-1], tokens[:, 1:], batch_rows, inputs_print)


def posterior_sums(predictions: Predictions) -> PredictiveSums:
    """The summed KL and log-losses of every model over every input position, one batch of rows at a time."""
    names = list(predictions.adapters)
    sums = PredictiveSums(names)
    for start in range(0, predictions.inputs.shape[0], predictions.batch_rows):
        rows = slice(start, start + predictions.batch_rows)
        logits = [predictions.adapters[name].logits(predictions.inputs[rows]) for name in names]  # [b, pos, C] each
        targets = predictions.targets[rows].reshape(-1)  # [b * pos]
        step = max(1, _CHUNK_VALUES // (len(names) * logits[0].shape[-1]))
        for first in range(0, targets.numel(), step):
            chunk = torch.stack([torch.log_softmax(l.reshape(-1, l.shape[-1])[first:first + step].double(), dim=-1)
                                 for l in logits])  # [K, positions, C]
            sums.update(chunk, targets[first:first + step])
    return sums


def posterior_step(run_dir: Path, record: RunRecord, settings: PosteriorConfig, compared_print: str) -> RunRecord:
    """`record` with the tables of the module docstring (step "seeds") and the mixture's facts, or a note
    saying why they were left out."""
    if not settings.enabled:
        return record
    predictions = record.predictions
    if predictions is None:
        return dataclasses.replace(record, notes=[*record.notes, (
            "seeds as posterior samples left out: not every model gives next-token distributions (an encoder, or "
            "a checkpoint without its language-model head)")])
    comparison = record.comparison
    step_print = fingerprint(inputs=predictions.inputs_print, compare=compared_print,
                             threshold=comparison.threshold, posterior=settings.model_dump())

    def compute() -> dict[str, pd.DataFrame]:
        d = divergences(posterior_sums(predictions))
        seeds = seed_clusters(d.models, d.symmetric, threshold=settings.threshold, linkage=settings.linkage)
        seeds = seeds.assign(log_loss=d.log_loss, mixture_log_loss=d.mixture_log_loss, regret=d.regret)
        kl = pd.DataFrame([{"model_a": a, "model_b": b, "kl": d.kl[i, j], "symmetric_kl": d.symmetric[i, j]}
                           for i, a in enumerate(d.models) for j, b in enumerate(d.models) if i != j])
        return {"seeds": seeds, "seed_kl": kl,
                "seed_clusters": cluster_universality(comparison.pairs, seeds, threshold=comparison.threshold)}
    tables = table_step(run_dir / "tables", "seeds", step_print, compute, settings=settings.model_dump())
    seeds = tables["seeds"]
    facts = {"seeds as posterior samples": (
        f"{seeds.cluster.nunique()} cluster(s) at symmetric KL {settings.threshold} nats ({settings.linkage} linkage); "
        f"mixture log-loss {seeds.mixture_log_loss.iloc[0]:.4f} nats, regret against the best seed "
        f"{seeds.regret.iloc[0]:+.4f}")}
    return dataclasses.replace(record, tables={**record.tables, **tables}, facts={**record.facts, **facts})
