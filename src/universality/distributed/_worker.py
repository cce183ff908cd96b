"""What one worker (one Ray actor per device) does: build its batch source once, then run jobs.

A *source factory* is a picklable callable, `factory(device)`, run once on the worker when its actor
starts (so models load once per worker, on its device); it returns the *source*, `source(start, stop)`, which yields
the batches [start, stop) of the stream as `(batch, token_ids)` pairs: `batch` is
`{model: {unit_set: Tensor[tokens, units]}}` and `token_ids` each token's global index, LongTensor
[tokens] (or None when no top activations are kept). Every call must yield the same batches for the
same range: each pass streams them again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ..errors import UniversalityError
from ..moments import Block, MomentAccumulator, TopActivations
from ._jobs import Job
from ._state import state_arrays

__all__ = ["Worker", "run_job", "SourceFactory"]

Source = Callable[[int, int], Iterable]  # (start, stop) -> (batch, token_ids) pairs of batches [start, stop)
SourceFactory = Callable[[str], Source]  # device -> source


def run_job(source: Source, job: Job, layout: dict, *, dtype: str, blocks: Sequence[Block] | None, passes: int,
            device: str = "cpu", top_k: int | None = None) -> dict[str, np.ndarray]:
    """Accumulate the batches of `job` into a `MomentAccumulator(layout, dtype, blocks=blocks)` and
    return its state as arrays (`state_arrays`), with the shard's top `top_k` activations per unit
    when `top_k` is given. A bad batch raises one line naming the pass and batch, as in-process."""
    acc = MomentAccumulator(layout, dtype=dtype, device=device, blocks=None if blocks is None else list(blocks))
    top = None if top_k is None else TopActivations(layout, k=top_k)
    seen = 0
    for number, (batch, token_ids) in enumerate(source(job.start, job.stop), start=job.start):
        try:
            acc.update(batch)
            if top is not None:
                top.update(batch, token_ids)
        except UniversalityError as error:
            raise UniversalityError(f"{Job(job.pass_index, number, number + 1).describe(passes)}: {error}") from None
        seen += 1
    if seen != job.stop - job.start:
        raise UniversalityError(f"{job.describe(passes)}: the stream has no batch {job.start + seen}; batch_count "
                                "is larger than the number of batches")
    return state_arrays(acc.end_stream(), top)


class Worker:
    """The body of one worker actor: `factory(device)` once at creation, then `run` per job.

    Parameters
    ----------
    factory : SourceFactory
        Builds the worker's source (loads its models) once.
    device : str
        Where the worker streams and accumulates ("cpu", or "cuda": the actor's own GPU).

    A factory that raises does not kill the actor: every job then raises the same error, so a bad
    input (a `UniversalityError`) reaches the driver as its one line, not as a dead actor.
    """

    def __init__(self, factory: SourceFactory, device: str):
        self.device = device
        try:
            self._source, self._error = factory(device), None
        except Exception as error:  # noqa: BLE001 - reported by every job (class docstring)
            self._source, self._error = None, error

    def run(self, job: Job, layout: dict, dtype: str, blocks: Sequence[Block] | None, passes: int,
            top_k: int | None) -> dict[str, np.ndarray]:
        """`run_job` on this worker's source."""
        if self._error is not None:
            raise self._error
        return run_job(self._source, job, layout, dtype=dtype, blocks=blocks, passes=passes, device=self.device,
                       top_k=top_k)
