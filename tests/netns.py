"""Network namespaces for multi-host tests on one machine (root only; skipped otherwise).

:func:`namespaces` creates ``n`` namespaces, each joined to the root namespace by its own veth
pair, and always deletes them again (even when the test fails):

* names carry the test process's pid, so parallel runs do not collide: namespace
  ``plb{pid}h{i}``, root-side link ``plb{pid}r{i}``, host-side link ``plb{pid}n{i}``;
* addresses come from one private /24 of 10.200.0.0/13 drawn from the pid,
  ``10.{200 + pid // 256 % 8}.{pid % 256}.0/24`` (distinct for pids that differ modulo 2048):
  host ``i`` is ``.{4i + 2}/30`` and its root side (its gateway) ``.{4i + 1}/30``;
* an ``unreachable`` route for that /24 in the root namespace: while a host's link is down its
  /30 route is gone, and the /24 route makes connects to it fail at once (EHOSTUNREACH) instead
  of leaking out through the default route. Traffic only ever goes to loopback or to these
  namespaces.

:class:`Host` cuts (``ip link set ... down`` on the root side) and restores a host, and
prefixes a command with ``ip netns exec`` (which execs it: the pid tests.helpers.spawn gets is
the command's own, so stop_process signals its group as usual).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


@dataclass
class Host:
    """One namespace: ``addr`` is the host's address, ``gateway`` its root-side peer."""

    index: int
    ns: str
    veth: str
    peer: str
    addr: str
    gateway: str

    def exec(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside this namespace."""
        return ["ip", "netns", "exec", self.ns, *cmd]

    def cut(self) -> None:
        """The host drops off the network: its root-side link goes down."""
        _ip("link", "set", self.veth, "down")

    def restore(self) -> None:
        _ip("link", "set", self.veth, "up")


def skip_unless_possible() -> None:
    """Skip the calling test, saying why, where namespaces cannot be made."""
    if os.geteuid() != 0:
        pytest.skip("multi-host tests need root (ip netns add); CI runs them as root")
    if shutil.which("ip") is None:
        pytest.skip("multi-host tests need the ip command (apt-get install -y iproute2)")


def subnet(pid: int) -> str:
    """The /24 of this run, as ``10.X.Y`` (see the module docstring)."""
    return f"10.{200 + pid // 256 % 8}.{pid % 256}"


@contextmanager
def namespaces(n: int) -> Iterator[list[Host]]:
    """``n`` hosts, each in a namespace of its own; all of it is deleted at the end."""
    skip_unless_possible()
    pid = os.getpid()
    net = subnet(pid)
    hosts = [
        Host(i, f"plb{pid}h{i}", f"plb{pid}r{i}", f"plb{pid}n{i}", f"{net}.{4 * i + 2}", f"{net}.{4 * i + 1}")
        for i in range(n)
    ]
    route = f"{net}.0/24"
    made: list[Host] = []
    try:
        try:
            for h in hosts:
                res = _ip("netns", "add", h.ns, check=False)
                if res.returncode != 0:
                    pytest.skip(f"cannot create a network namespace (ip netns add): {res.stderr.strip()}")
                made.append(h)
                _ip("link", "add", h.veth, "type", "veth", "peer", "name", h.peer, "netns", h.ns)
                _ip("addr", "add", f"{h.gateway}/30", "dev", h.veth)
                _ip("link", "set", h.veth, "up")
                _ip("-n", h.ns, "addr", "add", f"{h.addr}/30", "dev", h.peer)
                _ip("-n", h.ns, "link", "set", h.peer, "up")
                _ip("-n", h.ns, "link", "set", "lo", "up")
            _ip("route", "add", "unreachable", route)
        except subprocess.CalledProcessError as exc:
            # A container may allow namespaces but not veth links or routes (no CAP_NET_ADMIN).
            pytest.skip(f"cannot set up the namespaces' network: {' '.join(exc.cmd)}: {exc.stderr.strip()}")
        yield hosts
    finally:
        _ip("route", "del", "unreachable", route, check=False)
        for h in made:
            _kill_left_in(h.ns)
            _ip("netns", "del", h.ns, check=False)  # deletes the peer, and with it the veth
            _ip("link", "del", h.veth, check=False)


def _kill_left_in(ns: str) -> None:
    """SIGKILL what is still running in ``ns`` (only what this test started runs there)."""
    res = _ip("netns", "pids", ns, check=False)
    for word in res.stdout.split():
        try:
            os.kill(int(word), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
