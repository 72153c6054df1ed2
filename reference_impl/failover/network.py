"""Hosts for the drills: each server in its own network namespace, so a partition is a cable pulled.

`Network` makes one Linux bridge in the root namespace and, per host, a namespace joined to the bridge
by a veth pair: host i answers at 10.<net>.0.<i+2> on the bridge, the root namespace (the lab's
Redis, the failover manager, the majority's clients) at 10.<net>.0.1. `isolate(host)` sets the
root end of the host's veth down: the host and whatever runs inside its namespace (its server, and a
minority-side client thread that entered it with `inside`) keep talking among themselves and reach
nobody else. `heal` sets it up again. Everything is deleted by `close`, also after a failure.

This needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); `available()` says why not otherwise, and the
drills then run without partitions, every server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000


class NetworkError(RuntimeError):
    pass


def available() -> str | None:
    """None when namespaces can be made here, else a one-line reason."""
    if os.geteuid() != 0:
        return "network partitions need root (network namespaces and veth pairs)"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"network partitions need the `{tool}` tool (iproute2 / util-linux)"
    probe = f"slprobe{os.getpid() % 100000}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None, check: bool = True) -> None:
    cmd = ["ip", *(("-n", ns) if ns else ()), *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise NetworkError(f"{' '.join(cmd)}: {r.stderr.strip()}")


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    address: str
    veth: str
    """The veth end in the root namespace, on the bridge."""

    def command(self, argv: list[str], *, uid: int | None = None, gid: int | None = None) -> list[str]:
        """`argv` run inside the host's namespace (as `uid`/`gid` when given)."""
        ids = [f"--setuid={uid}", f"--setgid={gid}"] if uid is not None and gid is not None else []
        return ["nsenter", f"--net=/run/netns/{self.netns}", *ids, "--", *argv]


class Network:
    """A bridge and one namespace per host; a partition cuts one host off the bridge."""

    def __init__(self, tag: str, net: int = 77) -> None:
        self.tag = tag[:6]
        self.net = net
        self.bridge = f"slbr{self.tag}"
        self.hosts: dict[str, Host] = {}
        self.isolated: set[str] = set()
        self._up = False

    @property
    def gateway(self) -> str:
        return f"10.{self.net}.0.1"

    def up(self) -> Network:
        self.close()  # leftovers of a run that was killed
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self._up = True
        return self

    def add(self, name: str) -> Host:
        i = len(self.hosts)
        host = Host(name, f"sl{self.tag}{i}", f"10.{self.net}.0.{i + 2}", f"sl{self.tag}{i}r")
        inner = f"sl{self.tag}{i}n"
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", host.netns)
        _ip("link", "set", host.veth, "master", self.bridge)
        _ip("link", "set", host.veth, "up")
        _ip("addr", "add", f"{host.address}/24", "dev", inner, ns=host.netns)
        _ip("link", "set", inner, "up", ns=host.netns)
        _ip("link", "set", "lo", "up", ns=host.netns)
        self.hosts[name] = host
        return host

    def isolate(self, name: str) -> None:
        _ip("link", "set", self.hosts[name].veth, "down")
        self.isolated.add(name)

    def heal(self, *names: str) -> None:
        """Reconnect `names` (default: every isolated host)."""
        for name in sorted(set(names or self.isolated) & self.isolated):
            _ip("link", "set", self.hosts[name].veth, "up")
            self.isolated.discard(name)

    def close(self) -> None:
        """Delete every namespace (their veth pairs go with them) and the bridge; never raises."""
        for i in range(8):
            _ip("link", "del", f"sl{self.tag}{i}r", check=False)  # the pair goes with either end
            _ip("netns", "del", f"sl{self.tag}{i}", check=False)
        _ip("link", "del", self.bridge, check=False)
        self.hosts.clear()
        self._up = False


_libc = None
_enter_lock = threading.Lock()


@contextlib.contextmanager
def inside(host: Host) -> Iterator[None]:
    """Run the calling thread inside `host`'s namespace (sockets it opens stay there); back on exit.

    Only for a thread of its own: the namespace is per thread, and an event loop run in that thread
    opens its connections from the host's side of a partition.
    """
    global _libc
    with _enter_lock:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{host.netns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise NetworkError(f"setns into {host.netns}: {os.strerror(ctypes.get_errno())}")
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)
