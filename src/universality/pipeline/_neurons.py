"""The neurons-table step shared by language and pretrained runs: what the compared MLP neurons do.

One more pass over the evaluation rows gives, per hook_post neuron, exact pre/post moments, its
family (best variance-reducing token feature) and, from the weights, weight statistics and a
prediction / suppression role (`analyze.neuron_table`). Analyses that need an unembedding are left
out, with a note, for models that have none (a base encoder such as MiniLM).

Why a pass of its own and not folded into the comparison's: it needs the hook_pre sets beside the
compared ones, and it needs the comparison's answer. A family is found from per-value activation
sums, [values, units] float64 per unit set: for 5 GPT-2-small seeds over their vocabulary (twice:
token and previous token) that is 148 GB, which no budget holds. Knowing which neurons are universal,
this pass measures the family of every universal neuron and of a seeded random sample of the others,
as many as half the memory budget holds (`family_units`; `family_summary` scales the sample back up),
and says so in a note. The forward it repeats costs 0.04-0.05 of a streaming pass at GPT-2-small
widths (examples/gpt2_family/measure_forward.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .._rundir import fingerprint
from ..neurons import neuron_table, row_context
from ..collect import batch_count, stream_activations
from ..models import fold_layernorm, is_post_layernorm
from ..tokens import keep_mask
from ._steps import Progress, table_step

__all__ = ["neuron_step", "analysis_weights", "family_units"]


def neuron_step(run_dir: Path, adapters: dict, tokens: torch.Tensor, *, inputs_print: str, units: pd.DataFrame,
                feature_sets: list, drop: list[int], batch_rows: int, on_progress: Progress,
                memory_budget: int | None = None, seed: int = 0, labels: dict[str, torch.Tensor] | None = None,
                feature_tokens: dict[str, dict[str, str]] | None = None) -> tuple[pd.DataFrame | None, list[str]]:
    """The neurons table of the compared `*.mlp.hook_post` sets over token rows [rows, pos] (with
    optional per-token `labels` {name: [rows, pos]} as extra features, and `feature_tokens`
    {feature set: {feature value: the tokens it stands for}} naming a label's tokens in the
    `feature_tokens` column, e.g. class 7 -> "c7_t0 c7_t1 ..."), saved as
    `tables/neurons.parquet` and skipped when made from the same inputs; None when no hook_post set
    was compared. Families are measured for the units `family_units` picks within `memory_budget`
    (bytes, None: every unit; `seed` draws the sample). Returns (table, notes: one line per analysis
    left out or sampled)."""
    post = [s for s in units.unit_set.unique() if s.endswith("mlp.hook_post")]
    if not post:
        return None, []
    weights, notes = {}, []
    for name, adapter in adapters.items():
        found = analysis_weights(adapter)
        if "W_U" in found:
            weights[name] = found
        else:
            notes.append(f"{name}: no unembedding (W_U), so weight statistics and prediction / suppression "
                         "roles are left out for it")
    per_unit = 8 * sum(_feature_values(feature_sets, tokens, labels).values())  # bytes of per-value sums
    kept, note = family_units(units[units.unit_set.isin(post)], per_unit, memory_budget, seed)
    notes += [note] if note else []
    step_print = fingerprint(inputs=inputs_print, units=pd.util.hash_pandas_object(units).sum().item(),
                             features=[f.name for f in feature_sets], weights=sorted(weights), tokens=feature_tokens,
                             family_units=None if kept is None else {f"{m}/{s}": v.tolist() for (m, s), v in kept.items()})

    def compute() -> dict[str, pd.DataFrame]:
        sets = [name for s in post for name in (s.replace("hook_post", "hook_pre"), s)]
        total = batch_count(tokens.shape[0], batch_rows)

        def batches():
            stream = stream_activations(adapters, tokens, unit_sets=sets, batch_rows=batch_rows, drop_tokens=drop)
            for index, batch in enumerate(stream):
                rows = slice(index * batch_rows, (index + 1) * batch_rows)
                keep = keep_mask(tokens[rows], drop).reshape(-1)  # the tokens `batch` kept
                context = row_context(tokens[rows], {k: v[rows] for k, v in (labels or {}).items()})
                context = {k: ({n: x[keep] for n, x in v.items()} if k == "labels" else v[keep])
                           for k, v in context.items()}
                on_progress("neuron statistics", index + 1, total)
                yield batch, context
        table = neuron_table(batches(), units=units[units.unit_set.isin(post)], feature_sets=feature_sets,
                             weights=weights or None, family_units=kept)
        if feature_tokens and "best_feature_set" in table:
            table["feature_tokens"] = [feature_tokens.get(kind, {}).get(str(value)) if isinstance(kind, str) else None
                                       for kind, value in zip(table.best_feature_set, table.best_feature)]
        return {"neurons": table}
    return table_step(run_dir / "tables", "neurons", step_print, compute)["neurons"], notes


def analysis_weights(adapter) -> dict:
    """An adapter's TransformerLens-named weights as the analysis reads them: LayerNorms folded for
    pre-LN models; post-LN (BERT-style) weights as they are, since their residual stream is the
    LayerNorm output already."""
    weights = adapter.weights()
    return weights if is_post_layernorm(weights) else fold_layernorm(weights)


def family_units(units: pd.DataFrame, bytes_per_unit: int, budget: int | None, seed: int
                 ) -> tuple[dict[tuple[str, str], torch.Tensor] | None, str | None]:
    """The units whose family is measured: None (all) when their per-value sums fit half of `budget`,
    else {(model, unit_set): int64 [kept], sorted} with every universal unit and a seeded uniform
    sample of the other live units filling it (or, when the universal ones alone do not fit, a sample
    of those); and a note saying what was sampled. `units`: a `units` table of the compared sets."""
    capacity = None if budget is None else budget // (2 * max(bytes_per_unit, 1))
    if capacity is None or capacity >= len(units):
        return None, None
    live = ~units.dead.to_numpy(bool)
    universal = units.universal.to_numpy(bool) & live
    others = np.flatnonzero(live & ~universal)
    generator = np.random.default_rng(np.random.SeedSequence([seed, 0xFA111]))
    if universal.sum() <= capacity:
        chosen = np.concatenate([np.flatnonzero(universal),
                                 generator.choice(others, min(len(others), capacity - universal.sum()), replace=False)])
        note = (f"families measured for all {universal.sum()} universal neurons and a random {len(chosen) - universal.sum()} "
                f"of the other {len(others)} live ones: the per-value sums of every neuron would take "
                f"{len(units) * bytes_per_unit / 2**30:.1f} GiB, over half the memory budget")
    else:
        chosen = generator.choice(np.flatnonzero(universal), capacity, replace=False)
        note = (f"families measured for a random {capacity} of the {universal.sum()} universal neurons and none of the "
                f"others: their per-value sums alone would take {universal.sum() * bytes_per_unit / 2**30:.1f} GiB, "
                "over half the memory budget; the family base rates are left out")
    picked = units.iloc[np.sort(chosen)]
    return ({(m, s): torch.tensor(group.unit.to_numpy(), dtype=torch.int64)
             for (m, s), group in picked.groupby(["model", "unit_set"], sort=False)}, note)


def _feature_values(feature_sets: list, tokens: torch.Tensor, labels: dict | None) -> dict[str, int]:
    """{value the feature sets read: how many values it takes}: the vocabulary for tokens, the row
    length for positions, the largest label + 1 for labels."""
    values = {}
    for fs in feature_sets:
        if fs.source in ("token", "prev_token"):
            count = fs.size or (len(fs.names) if fs.names is not None and fs.membership is None else None)
            count = count or int(tokens.max()) + 1
        elif fs.source == "position":
            count = tokens.shape[1]
        else:
            count = int(labels[fs.label].max()) + 1 if labels and fs.label in labels else 0
        values[fs.key] = max(values.get(fs.key, 0), count)
    return values
