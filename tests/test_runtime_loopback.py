"""A local Ray started by flowscale listens on loopback only (no service on the machine's network address).

Reads Linux's /proc: the listening TCP sockets (/proc/net/tcp, tcp6) owned by the Ray process tree.
"""

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import os, ray
from flowscale_ray.runtime.cluster import start_ray

def tree(root):
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            parents[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    pids, grew = {root}, True
    while grew:
        new = {p for p, pp in parents.items() if pp in pids} - pids
        pids |= new
        grew = bool(new)
    return pids

def socket_inodes(pids):
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            pass
    return inodes

def listening(inodes):
    out = []
    for name, width in (("tcp", 8), ("tcp6", 32)):
        for line in open(f"/proc/net/{name}").read().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ip_hex, port = f[1].split(":")
                out.append((name, ip_hex, int(port, 16)))
    return out

assert start_ray(None)
ray.get(ray.remote(lambda: 1).remote())  # a worker process too
print(repr(listening(socket_inodes(tree(os.getpid())))))
ray.shutdown()
"""

# 127.0.0.1, ::1 and ::ffff:127.0.0.1 as /proc writes them
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


@pytest.mark.slow
def test_local_ray_binds_loopback_only():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["RAY_AUTH_MODE"] = "disabled"
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    sockets = eval(out.stdout.strip().splitlines()[-1])  # a repr of tuples of str and int
    assert len(sockets) >= 3  # gcs, raylet, workers: the check saw Ray's services
    exposed = [s for s in sockets if s[1] not in LOOPBACK]
    assert not exposed, exposed
