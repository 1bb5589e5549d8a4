"""--mount: one master, an ASGI pool on /api and a WSGI pool on /, behind the proxy. One server
for the routing, the pools' processes, /lb-stats and a HUP under load (see driver.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import server_env, wait_for
from tests.integration.proxy.driver import Client, Load, ProxyProcess

MOUNTS = [
    "--mount",
    "/api=tests.apps_asgi:echo;workers=1;interface=asgi",
    "--mount",
    "/=tests.apps:echo;workers=2;strategy=round_robin",
]


def pools_of(p: ProxyProcess) -> dict[str, set[int]]:
    """The master's workers by the app in their process title."""
    out: dict[str, set[int]] = {"asgi": set(), "wsgi": set()}
    for c in p.children():
        try:
            title = " ".join(c.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "[tests.apps_asgi:echo]" in title:
            out["asgi"].add(c.pid)
        elif "[tests.apps:echo]" in title:
            out["wsgi"].add(c.pid)
    return out


@pytest.fixture
def pools(tmp_path: Path) -> Iterator[ProxyProcess]:
    p = ProxyProcess(tmp_path, [*MOUNTS, "--graceful-timeout", "5"])
    try:
        yield p.start()
    finally:
        p.stop()


def test_two_pools_route_report_and_reload_without_a_failed_request(pools: ProxyProcess) -> None:
    p = pools
    wait_for(lambda: p.health()[1]["healthy"] == 3, 10, "3 healthy local backends")
    before = pools_of(p)
    assert len(before["asgi"]) == 1 and len(before["wsgi"]) == 2, before

    with Client(p.port) as c:
        api = c.request("GET", "/api/users?x=1")
        assert api.status == 200 and api.json()["asgi"]["version"] == "3.0"  # the ASGI worker's scope
        assert api.json()["path"] == "/api/users"
        site = c.request("GET", "/apix")  # not /api: a segment boundary
        assert site.status == 200 and site.json()["path_info"] == "/apix" and "asgi" not in site.json()

    doc = p.stats()["pools"]
    assert [(x["route"], x["app"], x["interface"], x["workers"], x["ready_workers"]) for x in doc] == [
        ("/api", "tests.apps_asgi:echo", "asgi", 1, 1),
        ("/", "tests.apps:echo", "auto", 2, 2),
    ]
    assert doc[1]["strategy"] == "round_robin" and len(doc[1]["backends"]) == 2
    assert [x["serving"] for x in doc] == [{"asgi": 1}, {"wsgi": 2}]  # / (auto) learned WSGI

    # Bounds well past the reload (a fast machine served 3000 per thread before it ended): the
    # loops stop when the block ends.
    with (
        Load(p.port, threads=2, limit=50_000, seconds=30.0, target="/api/x") as a,
        Load(p.port, threads=2, limit=50_000, seconds=30.0, target="/page") as w,
    ):
        a.wait_more(20)
        w.wait_more(20)
        assert p.proc is not None
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "Reload finished" in p.text(), 15, "the reload's last line")
        served = (a.ok, w.ok)
        a.wait_more(20)
        w.wait_more(20)
    assert a.ok > served[0] + 20 and w.ok > served[1] + 20  # both loops ran past the reload's end
    assert a.failures == [] and w.failures == [], (a.failures[:5], w.failures[:5])
    assert "Reload finished: 3 workers replaced and the proxy" in p.text(), p.text()[-2000:]
    # The old workers drain (their idle keep-alive grace), then exit.
    after = wait_for(
        lambda: (lambda w: w if len(w["asgi"]) == 1 and len(w["wsgi"]) == 2 else None)(pools_of(p)),
        10,
        "the old workers gone",
    )
    assert not after["asgi"] & before["asgi"] and not after["wsgi"] & before["wsgi"]
    with Client(p.port) as c:
        assert "asgi" in c.request("GET", "/api").json()
        assert "path_info" in c.request("GET", "/").json()


def test_a_bad_mount_is_one_line_and_exit_2() -> None:
    for args, why in (
        (["--mount", "/api"], "must be ROUTE=MODULE:APP"),
        (["--mount", "/api=x:y;threads=2"], "unknown key 'threads'"),
        (["--mount", "/=x:y", "--dispatch", "reuseport"], "--mount needs --dispatch proxy"),
        (  # --check-config imports each pool's app as its workers would
            [
                "--mount",
                "/=tests.apps:echo",
                "--mount",
                "/api=tests.apps_asgi:echo;interface=wsgi",
                "--check-config",
            ],
            "--mount /api: app 'tests.apps_asgi:echo' is an ASGI application",
        ),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "prefork_lb", *args],
            env=server_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("prefork_lb: error: ") and why in lines[0], r.stderr
