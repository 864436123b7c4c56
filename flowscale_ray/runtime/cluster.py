"""Connecting to Ray: an existing cluster, the one a Ray job runs in, or a loopback-only local one."""

from __future__ import annotations

import os
import signal
import threading

import ray


def start_ray(address: str | None) -> bool:
    """Connect to Ray: an existing cluster at `address` ('auto', 'ray://...', 'HOST:PORT'), or, with None, the
    cluster named by RAY_ADDRESS (Ray sets it for a Ray job's entrypoint: the job joins the cluster it runs in),
    else a local Ray started in this process whose services listen on 127.0.0.1 only. Returns True if it started
    one. ray.init replaces the SIGTERM handler with its own; a Python handler the caller installed is put back."""
    if ray.is_initialized():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    try:
        env_address = os.environ.get("RAY_ADDRESS", "")
        if address is None and env_address and not env_address.startswith(("http://", "https://")):
            address = "auto"  # a dashboard URL in RAY_ADDRESS is for the `ray job` CLI, not a cluster to join
        if address:
            ray.init(address=address, configure_logging=False)
            return False
        if "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ:
            # Loopback only: otherwise Ray binds several services to the machine's network address (and some to
            # every interface) even with a loopback node ip. Ray reads the variable once, when it is imported,
            # so the constant is set too; setting the variable to 1 keeps Ray's own behaviour.
            from ray._private import ray_constants

            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
            ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(address="local", include_dashboard=False, configure_logging=False, _node_ip_address="127.0.0.1")
        return True
    finally:
        if callable(previous) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
