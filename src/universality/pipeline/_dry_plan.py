"""`univ plan`: the passes a run will make under its memory budget, and what they cost, before any
model is trained or any activation streamed.

The layout comes from the config (language and group models: their shapes; pretrained models:
loaded, not run). The time here is projected from a short calibration of this machine's float32
GEMM at the run's block shape, for the streamed co-moments plus the rotation baseline (whose cost
does not grow with the tokens, so it dominates short streams of wide unit sets); the GPU times are projections from the FLOP count alone, at the
rates the issue measured for an H100-class GPU (57 TFLOP/s fp32, 390 TFLOP/s TF32). Neither counts
the models' forward passes (at GPT-2-small widths about 1/160 of the cross-moments per token).
"""

from __future__ import annotations

import time

import torch

from .._rundir import seed_name
from ..collect import select_unit_sets
from ..compare._sketch import check_sketch_settings
from ..config import AnyExperimentConfig, ExperimentConfig, GroupExperimentConfig
from ..moments import Plan
from ._planned import plan_for

__all__ = ["experiment_plan", "gemm_rate"]

GPU_FP32_FLOPS, GPU_TF32_FLOPS = 57e12, 390e12  # H100-class, measured rates quoted in issue 9


def experiment_plan(config: AnyExperimentConfig) -> tuple[Plan, dict[str, str]]:
    """(the plan, the facts `univ plan` prints) for `config`, without training or streaming."""
    layout, batch_tokens, tokens, device = _layout(config)
    plan = plan_for(layout, batch_tokens, config.compare, config.scale, device)
    subsample, candidates = check_sketch_settings(config.scale.mode, config.scale.subsample, config.scale.candidates)
    streamed = tokens if subsample is None else subsample * tokens  # sketch: pass 1 GEMMs on the subsample only
    flop = plan.flop_per_token * streamed + plan.reduction_flop
    widest = max(n for sets in layout.values() for n in sets.values())
    rate = gemm_rate(batch_tokens, min(widest, 4096))
    facts = {
        "models": f"{len(layout)} ({', '.join(layout)})",
        "units per model": ", ".join(f"{m}: {sum(s.values()):,} in {len(s)} unit sets" for m, s in layout.items()),
        "tokens per pass": f"{tokens:,} (batches of about {batch_tokens:,})",
        "memory budget": "none (one pass)" if plan.budget is None else _gib(plan.budget),
        "resident memory": ", ".join(f"{k} {_gib(v)}" for k, v in plan.resident.items()),
        "passes": str(len(plan.passes)) if subsample is None else
                  (f"sketch: {len(plan.passes)} over a {subsample:.3g} subsample of every batch (the plan below, for "
                   f"whole batches; a subsample's batches are smaller), then one stream over the {candidates} "
                   "candidate partners per unit and other model and the full rows of the units pass 1 barely saw or "
                   "found near the threshold (sized after pass 1, within the budget; not counted below)"),
        "GFLOP per token (all passes)": f"{plan.flop_per_token / 1e9:.3g}",
        "total TFLOP": f"{flop / 1e12:.3g} (streaming {plan.flop_per_token * streamed / 1e12:.3g}, rotation baseline "
                       f"{plan.reduction_flop / 1e12:.3g})",
        "this machine": f"{rate / 1e9:.0f} GFLOP/s measured now -> about {_duration(flop / rate)} of GEMMs",
        "GPU (projection from FLOPs)": (f"{_duration(flop / GPU_FP32_FLOPS)} at fp32, {_duration(flop / GPU_TF32_FLOPS)}"
                                        " with TF32 (H100-class)"),
    }
    return plan, facts


def gemm_rate(tokens: int, width: int, seconds: float = 0.5) -> float:
    """FLOP/s of this machine's float32 `a.T @ b` for a, b [tokens, width] (best of ~`seconds`)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(max(tokens, 1), width, generator=generator)
    b = torch.randn(max(tokens, 1), width, generator=generator)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = time.perf_counter()
        a.T @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * a.shape[0] * width * width / best


def _layout(config) -> tuple[dict, int, int, str]:
    """({model: {unit_set: units}}, tokens per batch, tokens per pass, device) of a run of `config`."""
    if isinstance(config, ExperimentConfig):
        from ..models import TinyTransformer
        from ..tasks import SyntheticLanguage
        language = SyntheticLanguage(config.language)
        probe = TinyTransformer(config.model, vocab_size=language.vocab_size, n_ctx=config.language.seq_len)
        sizes = probe.unit_sets()
        names = select_unit_sets(sizes, config.collect.unit_sets)
        per_row = config.language.seq_len - int(config.collect.drop_bos)
        layout = {seed_name(seed): {name: sizes[name] for name in names} for seed in config.seeds}
        return layout, config.collect.batch_rows * per_row, config.collect.rows * per_row, config.device
    if isinstance(config, GroupExperimentConfig):
        from ..groups import make_group
        from ._groups import _PAIR_BATCH, _hidden, seed_prefix
        order = make_group(config.task.group).order
        architectures = config.architectures
        layout = {}
        for index, model in enumerate(architectures):
            prefix = seed_prefix(architectures, index)
            width = model.hidden if model.arch == "mlp" else model.d_mlp
            layout |= {seed_name(seed, prefix): {_hidden(model): width} for seed in config.seeds}
        return layout, min(_PAIR_BATCH, order * order), order * order, "cpu"
    from ._pretrained import _load
    adapters = _load(config)
    first = next(iter(adapters.values()))
    names = select_unit_sets(first.unit_sets, config.collect.unit_sets)
    layout = {name: {s: adapter.unit_sets[s] for s in names} for name, adapter in adapters.items()}
    seq_len = config.data.seq_len
    return layout, config.collect.batch_rows * seq_len, config.data.rows * seq_len, config.device


def _gib(value: int) -> str:
    return f"{value / 2**30:.2f} GiB"


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.3g} s"
