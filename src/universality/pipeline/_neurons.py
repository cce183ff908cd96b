"""The neurons-table step shared by language and pretrained runs: what the compared MLP neurons do.

One more pass over the evaluation rows (cheap beside the cross-moments: per-unit moments and
per-feature sums) gives, per hook_post neuron, exact pre/post moments, its family (best
variance-reducing token feature) and, from the weights, weight statistics and a prediction /
suppression role (`analyze.neuron_table`). Analyses that need an unembedding are left out, with
a note, for models that have none (a base encoder such as MiniLM).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from .._rundir import fingerprint
from ..neurons import neuron_table, row_context
from ..collect import batch_count, stream_activations
from ..models import fold_layernorm, is_post_layernorm
from ..tokens import keep_mask
from ._steps import Progress, table_step

__all__ = ["neuron_step", "analysis_weights"]


def neuron_step(run_dir: Path, adapters: dict, tokens: torch.Tensor, *, inputs_print: str, units: pd.DataFrame,
                feature_sets: list, drop: list[int], batch_rows: int, on_progress: Progress,
                labels: dict[str, torch.Tensor] | None = None,
                feature_tokens: dict[str, dict[str, str]] | None = None) -> tuple[pd.DataFrame | None, list[str]]:
    """The neurons table of the compared `*.mlp.hook_post` sets over token rows [rows, pos] (with
    optional per-token `labels` {name: [rows, pos]} as extra features, and `feature_tokens`
    {feature set: {feature value: the tokens it stands for}} naming a label's tokens in the
    `feature_tokens` column, e.g. class 7 -> "c7_t0 c7_t1 ..."), saved as
    `tables/neurons.parquet` and skipped when made from the same inputs; None when no hook_post set
    was compared. Returns (table, notes: one line per analysis left out)."""
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
    step_print = fingerprint(inputs=inputs_print, units=pd.util.hash_pandas_object(units).sum().item(),
                             features=[f.name for f in feature_sets], weights=sorted(weights), tokens=feature_tokens)

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
                             weights=weights or None)
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
