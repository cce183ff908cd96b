"""Connecting to Ray: an existing cluster by address, or an embedded one on this machine.

Ray is optional (`pip install 'universality[ray]'`) and imported only here, when a run asks for it.
An address that does not answer is refused in one line within `PROBE_SECONDS` (Ray itself retries
for minutes), before anything is written.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from ..errors import UniversalityError

__all__ = ["import_ray", "ray_session", "check_address", "PROBE_SECONDS"]

PROBE_SECONDS = 5.0  # how long an address may take to accept a TCP connection
_HINT = ("start the cluster (`ray start --head` on its head node) or leave the address unset for an embedded Ray "
         "on this machine")


def import_ray() -> ModuleType:
    """The `ray` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UniversalityError("backend 'ray' needs Ray, which is not installed: pip install 'universality[ray]' "
                                "(or pip install ray)") from None
    return ray


def check_address(address: str) -> None:
    """Refuse in one line an `address` that is not 'auto', 'host:port' or 'ray://host:port', or whose
    host does not accept a connection on that port within `PROBE_SECONDS`."""
    if address == "auto":  # Ray looks the running cluster up itself, and says at once when there is none
        return
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UniversalityError(f"Ray address {address!r} is not 'host:port', 'ray://host:port' or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_SECONDS).close()
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or type(error).__name__)
        raise UniversalityError(f"Ray address {address!r} does not answer ({reason}); {_HINT}") from None


@contextmanager
def ray_session(address: str | None, workers: int) -> Iterator[ModuleType]:
    """Yield the `ray` module, connected.

    Parameters
    ----------
    address : str or None
        An existing cluster ('host:port', 'ray://host:port' or 'auto'); None starts an embedded Ray
        on this machine with `workers` CPUs.
    workers : int
        CPUs of an embedded Ray (one per worker).

    A Ray already initialised in this process is used as it is and left running (so one `ray.init`
    serves many calls); a connection made here is shut down on exit.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address is not None:
        check_address(address)
    where = "an embedded Ray" if address is None else f"Ray at {address!r}"
    options = {"address": "local", "num_cpus": workers} if address is None else {"address": address}
    try:
        ray.init(**options, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as error:  # noqa: BLE001 - Ray's many start and connection errors, said in one line
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        hint = "" if address is None else ("; the address answers: check that its Ray version is this one and, for a "
                                           "cluster with token authentication, set RAY_AUTH_MODE=token here too")
        raise UniversalityError(f"cannot start {where}: {first}{hint}") from None
    try:
        yield ray
    finally:
        ray.shutdown()
