"""How many CPU threads torch runs on: the cores this process may use, fewer under load.

`threads = "auto"` (the default) picks the cores in this process's affinity set, minus those the
load average says are busy (at least 1): on a shared 2-core machine at load 8-10, 2 threads did not
finish one demo seed in 25 minutes while 1 thread finished in 19. A number above the available
cores is lowered to them with a warning (libgomp aborts at 1000 threads on 2 cores).

>>> resolve_threads(1)
1
>>> 1 <= resolve_threads("auto") <= available_cores()
True
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from .errors import UniversalityError

__all__ = ["resolve_threads", "available_cores", "torch_threads", "map_single_threaded"]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity set; all cores where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def resolve_threads(setting: int | str | None) -> int:
    """The thread count for `setting`: "auto" or None -> idle available cores (at least 1);
    an int -> itself, lowered to the available cores (with a warning) when it asks for more."""
    cores = available_cores()
    if setting is None or setting == "auto":
        return max(1, min(cores, cores - _busy_cores()))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise UniversalityError(f"threads must be a positive integer or 'auto', got {setting!r}")
    if setting > cores:
        warnings.warn(f"threads = {setting} but this process may use {cores} cores; using {cores}", stacklevel=2)
        return cores
    return setting


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the body with torch on `threads` threads, then restore the previous count."""
    import torch  # here, not at the top: the config checks import this module and stay fast
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def map_single_threaded(function: Callable, items: Iterable, workers: int) -> list:
    """[function(item) for item in items], on `workers` Python threads with torch on one thread each.

    For many small independent decompositions, such as the similarity metrics of every unit-set pair
    (SVDs of 256 x 256): torch releases the GIL inside its operations, so the workers use the cores in
    parallel, and none waits at a barrier for a thread on a busy core. At load 6 on 2 cores, 48 rounds of
    a 256-wide SVD, SVD values and QR took 21 s on 2 torch threads, 2.4 s on 1 thread, 1.9 s here on 2 workers.
    """
    with torch_threads(1), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(function, items))


def _busy_cores() -> int:
    """Cores kept busy by other work: the 1-minute load average, rounded (0 where it is unknown)."""
    try:
        return math.floor(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):
        return 0
