"""The passes of a plan streamed on Ray workers: `run_plan`'s `stream_pass` (compare/_passes.py).

One actor per device (`num_cpus=1`, and `num_gpus=1` on CUDA) gets the source factory once. Each
pass is cut into token shards (`shard_jobs`, one per worker), handed to free actors as they finish;
each returns its shard's state as numpy arrays, and the driver merges the shards of the pass by
Chan's update in a balanced tree in shard order (`merge_tree`), so a run is repeatable. A job that
fails (its actor died, or it raised anything but a `UniversalityError`) runs again on the next free
actor, at most `RETRIES` more times; a dead actor is replaced by a new one (its factory runs again).
A `UniversalityError` (a bad batch) stops the run at once with its line.

Memory: every worker holds one pass's blocks (the plan's budget applies per process) and its models;
the driver holds the shard states of one pass until they are merged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

from ..errors import UniversalityError
from ..moments import MomentAccumulator, Plan, TopActivations
from ._cluster import ray_session
from ._jobs import Job, JobBoard, shard_jobs
from ._state import accumulator_from_arrays, merge_tree, top_from_arrays
from ._worker import SourceFactory, Worker

__all__ = ["RayPasses", "pass_streamer"]


class RayPasses:
    """Callable `pass index -> MomentAccumulator` (the merged, complete state of that pass).

    Parameters
    ----------
    ray : module
        The connected `ray` module (`ray_session`).
    plan : Plan
    factory : SourceFactory
        Picklable (cloudpickle); run once per worker.
    batch_count : int
        Batches per pass.
    workers : int
        Actors, one per device.
    device : str, default='cpu'
        Where the driver keeps merged states; workers use "cpu", or "cuda" (their own GPU) for a CUDA device.
    top_k : int or None, default=None
        With an int, pass 0 also keeps each unit's top `top_k` activations (the source then yields
        token ids), merged and handed to `on_top(TopActivations)`.
    on_job : callable (pass index, batches of the pass done) or None
        Progress, after each job.
    """

    def __init__(self, ray: ModuleType, plan: Plan, factory: SourceFactory, batch_count: int, *, workers: int,
                 device: str = "cpu", top_k: int | None = None,
                 on_top: Callable[[TopActivations], None] | None = None,
                 on_job: Callable[[int, int], None] | None = None):
        self.ray, self.plan, self.batch_count, self.workers = ray, plan, batch_count, workers
        self.device, self.top_k, self.on_top, self.on_job = device, top_k, on_top, on_job
        gpu = str(device).startswith("cuda")
        try:
            self._factory = ray.put(factory)  # pickled once, resolved by every actor (and every replacement)
        except Exception as error:  # noqa: BLE001 - pickling errors have many types
            raise UniversalityError(f"the batch source cannot be sent to Ray workers (it must be picklable with "
                                    f"cloudpickle): {type(error).__name__}: {error}") from None
        self._actor = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_restarts=0)(Worker)
        self._worker_device = "cuda" if gpu else "cpu"
        self.actors = [self._new_actor() for _ in range(workers)]

    def _new_actor(self):
        return self._actor.remote(self._factory, self._worker_device)

    def __call__(self, index: int) -> MomentAccumulator:
        """Stream pass `index` as shards on the workers and merge them (module docstring)."""
        passes = len(self.plan.passes)
        blocks = None if passes == 1 else self.plan.passes[index]
        top_k = self.top_k if index == 0 else None
        board = JobBoard(shard_jobs(index, self.batch_count, self.workers), passes)
        free, running, done = list(self.actors), {}, 0
        while not board.finished:
            while free and board.waiting:
                job, actor = board.next(), free.pop(0)
                running[actor.run.remote(job, self.plan.layout, self.plan.dtype, blocks, passes, top_k)] = actor, job
            (ref,), _ = self.ray.wait(list(running), num_returns=1)
            actor, job = running.pop(ref)
            result, actor = self._result(ref, actor, job, board, blocks, top_k)
            free.append(actor)
            if result is not None and board.record(job, result):
                done += job.stop - job.start
                if self.on_job is not None:
                    self.on_job(index, done)
        states, tops = zip(*board.results())
        if top_k is not None and self.on_top is not None:
            self.on_top(merge_tree(tops))
        return merge_tree(states)

    def _result(self, ref, actor, job: Job, board: JobBoard, blocks, top_k: int | None) -> tuple[tuple | None, object]:
        """((state, top or None), actor) of a finished job, or (None, actor) when it failed (`board.failed`
        queues it again; a dead actor is replaced). A `UniversalityError` raised by the job is raised here."""
        ray = self.ray
        try:
            arrays = ray.get(ref)
        except ray.exceptions.RayTaskError as error:  # the job raised
            cause = error.cause if isinstance(error.cause, BaseException) else error
            if isinstance(cause, UniversalityError):
                raise UniversalityError(str(cause)) from None
            board.failed(job, f"{type(cause).__name__}: {_first_line(cause)}")
            return None, actor
        except ray.exceptions.RayError as error:  # the actor died, or the result was lost
            if isinstance(error, ray.exceptions.RayActorError):
                actor = self._replace(actor)
            board.failed(job, f"{type(error).__name__}: {_first_line(error)}")
            return None, actor
        state = accumulator_from_arrays(arrays, self.plan.layout, dtype=self.plan.dtype, blocks=blocks,
                                        device=self.device)
        return (state, None if top_k is None else top_from_arrays(arrays, self.plan.layout)), actor

    def _replace(self, actor):
        """A new actor in place of `actor` (dead, or unreachable: stopped to be sure)."""
        self.ray.kill(actor)
        index = self.actors.index(actor)
        self.actors[index] = self._new_actor()
        return self.actors[index]

    def close(self) -> None:
        """Stop the actors (their models and states go with them)."""
        for actor in self.actors:
            self.ray.kill(actor)


@contextmanager
def pass_streamer(backend: str, plan: Plan, factory: SourceFactory, batch_count: int, *, address: str | None,
                  workers: int, device: str = "cpu", top_k: int | None = None,
                  on_top: Callable[[TopActivations], None] | None = None,
                  on_job: Callable[[int, int], None] | None = None) -> Iterator[RayPasses | None]:
    """`run_plan`'s `stream_pass` for `backend` (checked by the caller): None for "local" (stream in this
    process), a `RayPasses` on a Ray session (`ray_session(address, workers)`) for "ray"; actors and a
    session started here end on exit. Other arguments as for `RayPasses`."""
    if backend == "local":
        yield None
        return
    with ray_session(address, workers) as ray:
        passes = RayPasses(ray, plan, factory, batch_count, workers=workers, device=device, top_k=top_k,
                           on_top=on_top, on_job=on_job)
        try:
            yield passes
        finally:
            passes.close()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]
