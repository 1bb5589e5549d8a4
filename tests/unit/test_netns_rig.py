"""tests/netns.py without root: the skip when namespaces cannot be made, and the addresses."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests import netns


def test_not_root_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="need root"):
        with netns.namespaces(3):
            raise AssertionError("no namespace may be made without root")


def test_each_pid_gets_its_own_private_24() -> None:
    nets = {netns.subnet(pid) for pid in range(1, 2049)}
    assert len(nets) == 2048
    assert all(n.startswith("10.") and 200 <= int(n.split(".")[1]) <= 207 for n in nets)


def test_no_veth_links_skips_and_deletes_what_was_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda name: "/sbin/ip")
    calls: list[tuple[str, ...]] = []

    def ip(*args: str, check: bool = True) -> Any:
        calls.append(args)
        if args[:2] == ("link", "add"):
            raise subprocess.CalledProcessError(2, ["ip", *args], "", "Operation not permitted")
        return subprocess.CompletedProcess(["ip", *args], 0, "", "")

    monkeypatch.setattr(netns, "_ip", ip)
    with pytest.raises(pytest.skip.Exception, match="Operation not permitted"):
        with netns.namespaces(2):
            raise AssertionError("unreachable")
    assert ("netns", "del", f"plb{netns.os.getpid()}h0") in calls
