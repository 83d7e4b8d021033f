"""Connect to Ray: the cluster at ``RAY_ADDRESS`` when set, else a fresh local one started here.

Two ways a plain ``ray.init()`` goes wrong, and what ``init_ray`` does instead:

- Without ``RAY_ADDRESS``, ``ray.init()`` joins the last cluster that ``ray start`` brought up on
  this machine (the ``ray_current_cluster`` file in Ray's temp folder), even when that head has
  died since; it then retries for minutes. ``init_ray`` asks for ``address="local"``: always a new
  local instance of its own.
- With ``RAY_ADDRESS`` naming a head that is gone, ``ray.init`` retries quietly for a long while.
  ``init_ray`` first waits at most ``connect_timeout_s`` for the head's port to accept a
  connection and otherwise raises ``RayConnectError`` naming the address.
"""

from __future__ import annotations

import logging
import os
import socket
import time

CONNECT_TIMEOUT_S = 60.0  # how long a head named by RAY_ADDRESS may take to answer


class RayConnectError(ConnectionError):
    """The Ray head named by ``RAY_ADDRESS`` did not answer in time; the message names the address."""


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` or ``scheme://host:port`` address; None for ``auto``/``local``
    and for anything without a port (Ray then reports on it itself)."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def wait_for_head(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Return once ``address``'s port accepts a TCP connection; raise ``RayConnectError`` after
    ``timeout_s`` seconds. Retries meanwhile: a head that is still starting gets the whole time."""
    target = _host_port(address)
    if target is None:
        return
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection(target, timeout=max(0.1, min(5.0, left))):
                return
        except OSError as e:
            last = e
        if time.monotonic() + 0.5 >= deadline:
            break
        time.sleep(0.5)
    raise RayConnectError(
        f"RAY_ADDRESS={address}: no Ray head answered within {timeout_s:g} s ({last}). Start the head "
        "(ray start --head), fix RAY_ADDRESS, or unset RAY_ADDRESS to run on a local Ray instance"
    )


def init_ray(num_cpus: int | None = None, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """``ray.init`` once per process: join ``RAY_ADDRESS`` (set by ``ray job submit`` or the user),
    otherwise start a new local single-node instance (never a leftover cluster on this machine).

    ``num_cpus`` only applies to a local instance. An unreachable ``RAY_ADDRESS`` raises
    ``RayConnectError`` within about ``connect_timeout_s`` seconds.
    """
    import ray

    if ray.is_initialized():
        return
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        wait_for_head(address, connect_timeout_s)
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
