"""`compare_activations(..., backend="ray")`: the user's batches streamed in token shards on Ray workers."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..compare._comparison import Comparison
from ..compare._passes import first_batch, run_plan
from ..errors import UniversalityError
from ..moments import layout_of, plan_passes
from ._ray_passes import pass_streamer
from ._sources import BatchSource, takes_range

__all__ = ["compare_on_ray"]


def compare_on_ray(batches: Callable, *, backend: str, workers: int, address: str | None, batch_count: int | None,
                   threshold: float, rotations: int, seed: int, device: str, dtype: str, budget: int | None,
                   rotation: str) -> Comparison:
    """The `Comparison` of `compare_activations` (its arguments, checked there), streamed by `workers`
    Ray actors, each given its shard of every pass.

    batches : picklable callable, batches(start, stop) -> the batches [start, stop), or batches() -> all
        of them (each worker skips to its shard with itertools.islice)
    batch_count : int or None
        Batches in the stream; None counts them once on the driver by iterating `batches()` (a
        `batches(start, stop)` callable needs it given).
    """
    if backend != "ray":
        raise UniversalityError(f"backend must be 'local' or 'ray', got {backend!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UniversalityError(f"workers must be an integer >= 1, got {workers!r}")
    if isinstance(batches, Mapping) or not callable(batches):
        raise UniversalityError(f"with backend='ray', batches must be a picklable callable (batches(start, stop) or "
                                f"batches()), got a {type(batches).__name__}")
    source = BatchSource(batches, takes_range(batches))
    models, tokens = first_batch(next(iter(source.shard(0, 1)), (None, None))[0])
    if batch_count is None:
        if source.ranged:
            raise UniversalityError("with batches(start, stop), pass batch_count= (the number of batches)")
        batch_count = sum(1 for _ in batches())
    elif isinstance(batch_count, bool) or not isinstance(batch_count, int) or batch_count < 1:
        raise UniversalityError(f"batch_count must be an integer >= 1, got {batch_count!r}")
    plan = plan_passes(layout_of(models), budget=budget, dtype=dtype, batch_tokens=tokens, rotations=rotations,
                       rotation=rotation)
    with pass_streamer(backend, plan, source, batch_count, address=address, workers=workers,
                       device=device) as stream_pass:
        return run_plan(plan, None, threshold=threshold, rotations=rotations, seed=seed, device=device,
                        rotation_kind=rotation, stream_pass=stream_pass)
