"""`compare_activations`: the entry point for users who bring their own activations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .._defaults import THRESHOLD
from .._inputs import check_device
from ..errors import UniversalityError
from ..moments import layout_of, parse_bytes, plan_passes
from ._comparison import Comparison, check_settings
from ._passes import check_batches, first_batch, rerunnable, run_plan, skip
from ._rotations import ROTATION_KINDS
from ._sketch import check_sketch_settings, compare_sketch

__all__ = ["compare_activations"]


def compare_activations(batches, *, threshold: float = THRESHOLD, rotations: int = 1, seed: int = 0,
                        device: str = "cpu", dtype: str = "float64", memory_budget=None,
                        rotation: str = "auto", backend: str = "local", workers: int = 2,
                        address: str | None = None, batch_count: int | None = None, mode: str = "exact",
                        subsample: float | None = None, candidates: int | None = None) -> Comparison:
    """Stream activation batches and find the universal units.

    Parameters
    ----------
    batches : iterable of {model_name: {unit_set_name: Tensor[tokens, units]}}, or a callable returning one
        Every batch holds the same models and unit sets, rows aligned by token across models.
        A bare Tensor[tokens, units] in place of the inner dict is one unit set named "units".
        Any real dtype (integers are converted; bool and complex are refused); requires_grad is fine.
        A plan of several passes (see `memory_budget`) streams the batches once per pass: pass a
        callable returning a fresh iterable (or a list); a one-shot iterator serves one pass only.
    threshold : float in (0, 1], default=0.5
        A unit is universal when its excess correlation exceeds this (Gurnee et al. 2024).
    rotations : int >= 1, default=1
        Haar rotations per unit set averaged in the baseline (exact, from the moments).
    seed : int >= 0, default=0
        Seeds the rotations (and the sketch's subsample).
    device : str, default='cpu'
        Where the moments and GEMMs live: 'cpu', 'cuda[:N]', or 'auto' (CUDA when present).
    dtype : {'float32', 'float64'}, default='float64'
        Moment state precision (`MomentAccumulator`). float64 takes activations of any finite scale
        (1e-30 or 1e30 alike; the GEMMs stay float32); float32 halves the memory and refuses, in one
        line, activations whose squares it cannot hold.
    memory_budget : int, str or None, default=None
        Bytes (or "12GiB", "500MB") the comparison may hold at once (`moments.plan_passes`): the
        co-moments are cut into unit-set blocks and grouped into passes over the data that fit.
        None: one pass holding everything. The tables are the same under any budget.
    rotation : {'auto', 'haar', 'fast'}, default='auto'
        The baseline's rotations: dense Haar, a structured fast rotation (its baseline matches Haar's
        distribution: compare/_rotations.py), or 'auto': Haar for unit sets up to 4096 units, fast above.
    backend : {'local', 'ray'}, default='local'
        'ray': `workers` Ray actors each stream a token shard of every pass (`universality.distributed`;
        needs `pip install 'universality[ray]'`). `batches` must then be a picklable (cloudpickle)
        callable: batches(start, stop) returning the batches [start, stop), or batches() returning all
        of them (each worker skips to its shard with itertools.islice).
    workers : int >= 1, default=2
        Ray actors (backend='ray'), one CPU each.
    address : str or None, default=None
        An existing Ray cluster ('host:port', 'ray://host:port', 'auto'); None starts an embedded Ray
        with `workers` CPUs (or uses the Ray already initialised in this process).
    batch_count : int or None, default=None
        Batches in the stream (backend='ray'); None counts them once here by iterating batches()
        (a batches(start, stop) callable needs it).
    mode : {'exact', 'sketch'}, default='exact'
        'sketch': sketch and refine (`compare._sketch`), for widths where an exact pass is too slow.
        Pass 1 is the exact comparison on a seeded subsample of the tokens, keeping each unit's
        top `candidates` partners in every other model and the rotation baseline; pass 2 streams
        every token for the candidate pairs only. max_corr and partner are exact over all tokens
        among the candidates; the baseline is the subsample's, denoised, except for units whose
        excess after pass 1 lies within 4 / sqrt(subsample tokens) of the threshold: pass 2 also
        accumulates their full rows and their baselines are over all tokens. So do the units the
        subsample saw move on fewer than 32 tokens (`barely_seen`), whose rows cost only the tokens
        where they leave their floor (or ceiling): partner, max and baseline as exact mode's. `units`
        gains `barely_seen` and `baseline_exact` (the units with full rows: baselines over all tokens).
        Streams the batches twice or more: pass a callable or a list. Local backend only.
    subsample : float in (0, 1], default=0.02 (mode='sketch' only)
        Fraction of every batch's tokens pass 1 keeps, drawn from (seed, batch index): a fraction,
        not a count, since a stream's length is unknown until it ends. Pass 1 costs about this
        fraction of an exact pass plus the rotation baseline (which does not grow with tokens)
        (`compare._sketch.compare_sketch`).
    candidates : int >= 1, default=8 (mode='sketch' only)
        Candidate partners kept per unit and other model (at most the other model's units).

    Every bad input raises one `UniversalityError` line naming the batch, model and unit set.
    The returned `Comparison.plan` holds the passes used.

    >>> import torch
    >>> shared = torch.randn(500, 4)
    >>> batches = [{"a": shared[:, [0, 1, 2, 3]], "b": shared[:, [3, 2, 1, 0]]}]
    >>> result = compare_activations(batches)
    >>> result.pairs.query("model == 'a'")["partner_unit"].tolist()
    [3, 2, 1, 0]
    """
    check_settings(threshold, rotations, seed)
    subsample, candidates = check_sketch_settings(mode, subsample, candidates)
    if mode == "sketch" and backend != "local":
        raise UniversalityError(f"mode='sketch' runs on the local backend only, got backend={backend!r}; pass "
                                "backend='local'")
    if dtype not in ("float32", "float64"):
        raise UniversalityError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if rotation not in ROTATION_KINDS:
        raise UniversalityError(f"rotation must be one of {', '.join(map(repr, ROTATION_KINDS))}, got {rotation!r}")
    device = str(check_device(device))
    budget = None if memory_budget is None else parse_bytes(memory_budget)
    if backend != "local":  # token shards on Ray workers
        from ..distributed import compare_on_ray
        return compare_on_ray(batches, backend=backend, workers=workers, address=address, batch_count=batch_count,
                              threshold=threshold, rotations=rotations, seed=seed, device=device, dtype=dtype,
                              budget=budget, rotation=rotation)
    check_batches(batches)
    make, reusable = rerunnable(batches)
    stream = iter(make())
    first = next(stream, None)
    models, tokens = first_batch(first)
    layout = layout_of(models)
    del models  # its tensors are the first batch's: not held through the passes
    if mode == "sketch":
        if not reusable:
            raise UniversalityError("mode='sketch' streams the batches twice (subsample, then candidates), but batches "
                                    "is a one-shot iterator; pass a callable returning a fresh iterable or a list")
        return compare_sketch(make, layout, tokens, subsample=subsample, candidates=candidates,
                              threshold=threshold, rotations=rotations, seed=seed, device=device, dtype=dtype,
                              budget=budget, rotation=rotation)
    plan = plan_passes(layout, budget=budget, dtype=dtype, batch_tokens=tokens, rotations=rotations,
                       rotation=rotation)
    if len(plan.passes) > 1 and not reusable:
        raise UniversalityError(f"memory_budget={memory_budget!r} needs {len(plan.passes)} passes over the data, but "
                                "batches is a one-shot iterator; pass a callable returning a fresh iterable "
                                "(e.g. lambda: make_batches()) or a list")
    opened = [first]  # the peeked first batch, handed over once: not held through the passes
    del first

    def resumed():
        yield opened.pop()  # bound to no name, so held only while it is streamed (a chain held it to the end)
        yield from stream

    def source(start: int):
        if opened and start == 0:  # the first pass continues the stream already opened
            return resumed()
        return skip(make, start)
    return run_plan(plan, source, threshold=threshold, rotations=rotations, seed=seed, device=device,
                    rotation_kind=rotation)
