"""Connecting to Ray: an existing cluster, the one a Ray job runs in, or a loopback-only local one.

A local Ray started here shares the driver's fate: a small watchdog process (its own session, so a terminal's
Ctrl-C or a process-group kill does not reach it) holds the read end of a pipe whose write end only the driver
holds. However the driver ends (a normal exit, an exception, SIGKILL, the OOM killer), the pipe closes and the
watchdog stops every process of that Ray session: the driver's descendants whose command line names the session
(the GCS, the raylet, ...) and everything below them, as it noted them every second while the driver lived (pid
and start time, so a reused pid is never touched) and as they are now, and any process whose command line names
the session. Nothing else the driver started is touched. Without it Ray's agents (`ray::DashboardAgent`,
`ray::RuntimeEnvAgent`) outlive a killed driver for good.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import IO, Any

import ray

# The watchdog, run as `python -S -c WATCHDOG DRIVER_PID SESSION_NAME` with the pipe on stdin. Plain Python (no
# imports beyond the standard library): it starts in milliseconds and holds a few MB.
WATCHDOG = r"""
import os, select, signal, sys, time

driver, session = int(sys.argv[1]), sys.argv[2]
me = os.getpid()

def stat(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[1]), int(fields[19])  # ppid, start time
    except (OSError, ValueError, IndexError):
        return None

def table():
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            st = stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out

def descendants(roots, procs):
    found, todo = set(), list(roots)
    while todo:
        parent = todo.pop()
        for pid, (ppid, _) in procs.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return found

def named(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return session.encode() in f.read()
    except OSError:
        return False

known = {}
while True:
    ready, _, _ = select.select([sys.stdin], [], [], 1.0)
    if ready and not os.read(sys.stdin.fileno(), 4096):
        break  # the driver is gone
    procs = table()
    roots = {pid for pid in descendants([driver], procs) if named(pid)}  # gcs_server, raylet, log monitor, ...
    known.update({pid: procs[pid][1] for pid in roots | descendants(roots, procs) if pid in procs})

procs = table()
alive = {pid for pid, start in known.items() if pid in procs and procs[pid][1] == start}
targets = (alive | descendants(alive, procs) | {pid for pid in procs if named(pid)}) - {me}
for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
    for pid in targets:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    deadline = time.monotonic() + wait
    while wait and time.monotonic() < deadline and any(stat(pid) for pid in targets):
        time.sleep(0.05)
"""

_watchdog: subprocess.Popen[Any] | None = None
_watchdog_pipe: IO[bytes] | None = None


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
        _watch()
        return True
    finally:
        if callable(previous) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _watch() -> None:
    """Start the watchdog of the local Ray just started (see the module docstring); Linux only (it reads /proc)."""
    global _watchdog, _watchdog_pipe
    stop_watchdog()
    if not os.path.isdir("/proc/self"):
        return
    session = ray._private.worker.global_worker.node.session_name
    read_end, write_end = os.pipe()
    try:
        _watchdog = subprocess.Popen(
            [sys.executable, "-S", "-c", WATCHDOG, str(os.getpid()), session],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(read_end)
    _watchdog_pipe = os.fdopen(write_end, "wb")  # not inheritable: only this process holds it


def stop_watchdog() -> None:
    """Close the pipe of this process's watchdog, if any: it then stops what is left of its Ray session (after a
    `ray.shutdown()`, nothing) and exits."""
    global _watchdog, _watchdog_pipe
    if _watchdog_pipe is not None:
        _watchdog_pipe.close()
    _watchdog_pipe, _watchdog = None, None
