"""The chaos suite: real servers under steady loopback load while workers are killed, reloaded,
added and removed, hung, leaking, held by slowloris connections, or flooded.

Run alone with ``python -m pytest -m slow tests/chaos`` (see tests/chaos/README.md). Every
scenario runs in every dispatch mode and adds one row to the results file. The targets:

* no failed request that had not yet reached the worker that died (``failed_unattributed``);
* no non-idempotent request (POST with a unique id) executed twice, and every acknowledged one
  executed exactly once (the app's ledger);
* normal requests keep a p99 under 50 ms while 500 slowloris connections are open.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from tests.chaos.client import HOST, Load, Result, Slowloris, one_request, p99_ms, snapshot_connections
from tests.chaos.conftest import DURATION, Server
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

StartServer = Callable[..., Server]


def failed(r: Result) -> bool:
    return r.kind != "ok" or r.status != 200


def ledger_check(srv: Server, results: Iterable[Result]) -> tuple[list[str], list[str]]:
    """(ids executed more than once, acknowledged ids not executed exactly once)."""
    counts = srv.ledger_counts()
    duplicates = sorted(rid for rid, n in counts.items() if n > 1)
    unexecuted = [r.rid for r in results if r.rid and not failed(r) and counts[r.rid] != 1]
    return duplicates, unexecuted


def add_row(
    rows: list[dict[str, Any]],
    scenario: str,
    mode: str,
    results: list[Result],
    unattributed: int,
    duplicates: int,
    notes: str,
    p99: float | None = None,
    n_failed: int | None = None,
) -> dict[str, Any]:
    if n_failed is None:
        n_failed = sum(map(failed, results))
    row = {
        "scenario": scenario,
        "mode": mode,
        "sent": len(results),
        "failed": n_failed,
        "failed_unattributed": unattributed,
        "duplicates": duplicates,
        "p99_ms": p99 if p99 is not None else p99_ms(results),
        "notes": notes,
    }
    rows.append(row)
    return row


def kinds(results: Iterable[Result]) -> str:
    c = Counter(r.kind if r.kind != "ok" else f"status_{r.status}" for r in results if failed(r))
    return ", ".join(f"{k} {n}" for k, n in sorted(c.items())) or "none"


def timeline(results: list[Result], events: list[tuple[float, str]]) -> str:
    """The failed requests among the scenario's events, for a failure message."""
    t0 = results[0].start if results else 0.0
    lines = [(t, f"{name}") for t, name in events]
    lines += [
        (r.start, f"request {r.kind} {r.status} port {r.lport} {r.ms:.0f} ms") for r in results if failed(r)
    ]
    return "\n".join(f"{t - t0:8.3f} {text}" for t, text in sorted(lines))


def wait_served(load: Load, n: int, timeout: float = 30.0) -> None:
    seen = load.served()
    wait_for(lambda: load.served() >= seen + n, timeout=timeout, what=f"{n} more requests served")


def wait_workers(srv: Server, n: int, why: str, timeout: float = 30.0) -> None:
    wait_for(lambda: len(srv.workers()) == n, timeout=timeout, what=f"{n} workers {why}")


def pause(seconds: float) -> None:
    """The scenario's own cadence (a kill every 0.5 s, a HUP every 3 s), not a synchronisation."""
    if seconds > 0:
        time.sleep(seconds)


# -- SIGKILL a random worker every 0.5 s --------------------------------------------------------


@dataclass
class Kill:
    pid: int
    t_stop: float
    t_kill: float
    ports: set[int]


def stop_snapshot_kill(pid: int, server_port: int | None) -> Kill | None:
    """SIGSTOP the victim, wait until it is stopped, list the connections it holds, SIGKILL it.
    A stopped process accepts nothing, so the list is exactly what dies with it."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return None
    t_stop = time.monotonic()
    try:
        proc = psutil.Process(pid)
        deadline = t_stop + 2.0
        while proc.status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.002)
        ports = snapshot_connections(pid, server_port)
    except psutil.Error:
        ports = set()
    t_kill = time.monotonic()
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return Kill(pid, t_stop, t_kill, ports)


def unattributed_failures(results: list[Result], kills: list[Kill], mode: str) -> list[Result]:
    """Failed requests that were not on a victim when it died. In proxy mode the victims'
    connections come from the proxy, not the client, so only their number bounds the failures."""
    bad = [r for r in results if failed(r)]
    if mode == "proxy":
        allowed = sum(len(k.ports) for k in kills)
        return bad[allowed:]
    return [
        r
        for r in bad
        if not any(r.lport in k.ports and r.start <= k.t_kill and r.end >= k.t_stop for k in kills)
    ]


def test_sigkill_random_worker_every_half_second(
    server: StartServer, mode: str, chaos_results: list[dict[str, Any]]
) -> None:
    workers = 3
    srv = server(mode, workers=workers)
    rng = random.Random(f"kill-{mode}")
    kills: list[Kill] = []
    snapshot_port = None if mode == "proxy" else srv.port
    with Load(srv.port, tag=f"kill-{mode}", rate=100, threads=12, path="/work?ms=3", timeout=30) as load:
        wait_served(load, 20)
        end = time.monotonic() + DURATION
        next_kill = time.monotonic()
        while next_kill < end:
            pause(next_kill - time.monotonic())
            next_kill += 0.5
            alive = srv.workers()
            if alive:
                k = stop_snapshot_kill(rng.choice(alive), snapshot_port)
                if k is not None:
                    kills.append(k)
        # Recovery: every slot serving again, and traffic flowing.
        wait_for(lambda: len(srv.workers()) == workers, timeout=30, what="every slot refilled")
        wait_served(load, 30)
    results = load.results
    bad = unattributed_failures(results, kills, mode)
    duplicates, unexecuted = ledger_check(srv, results)
    held = sum(len(k.ports) for k in kills)
    add_row(
        chaos_results,
        "sigkill every 0.5 s",
        mode,
        results,
        len(bad),
        len(duplicates),
        f"{len(kills)} kills, {held} connections held by victims, "
        f"{srv.text().count('crashed within a second of starting')} restart back-offs; failures: {kinds(results)}; "
        f"max {max(r.ms for r in results):.0f} ms",
    )
    assert len(kills) >= DURATION / 0.5 * 0.8, "the kill loop fell behind"
    assert "died unexpectedly: killed by SIGKILL" in srv.text()
    assert not bad, [(r.kind, r.lport, round(r.start, 3), round(r.end, 3)) for r in bad[:10]]
    assert not duplicates, duplicates[:10]
    assert not unexecuted, unexecuted[:10]


# -- HUP every 3 s --------------------------------------------------------------------------------


def test_hup_every_three_seconds(server: StartServer, mode: str, chaos_results: list[dict[str, Any]]) -> None:
    srv = server(mode, workers=2)
    first = set(srv.workers())
    hups = 0
    with Load(srv.port, tag=f"hup-{mode}", rate=100, threads=8, path="/work?ms=3") as load:
        wait_served(load, 20)
        end = time.monotonic() + DURATION
        while time.monotonic() < end:
            srv.signal(signal.SIGHUP)
            hups += 1
            pause(min(3.0, end - time.monotonic()))
        wait_for(lambda: srv.text().count("SIGHUP: reloading") >= hups, what="every HUP logged")
        wait_for(
            lambda: len(srv.workers()) == 2 and not first & set(srv.workers()),
            timeout=30,
            what="the first workers replaced and the old ones drained",
        )
        wait_served(load, 30)
    results = load.results
    duplicates, unexecuted = ledger_check(srv, results)
    add_row(
        chaos_results,
        "HUP every 3 s",
        mode,
        results,
        sum(map(failed, results)),
        len(duplicates),
        f"{hups} HUPs; failures: {kinds(results)}",
    )
    assert hups >= 2
    assert [r for r in results if failed(r)] == []
    assert not duplicates and not unexecuted


# -- TTIN / TTOU ------------------------------------------------------------------------------------


def test_ttin_ttou_under_load(server: StartServer, mode: str, chaos_results: list[dict[str, Any]]) -> None:
    srv = server(mode, workers=2)
    steps = 0
    sent_at: list[tuple[float, str]] = []
    with Load(srv.port, tag=f"ttin-{mode}", rate=100, threads=8, path="/work?ms=3") as load:
        wait_served(load, 20)
        n = 2
        end = time.monotonic() + DURATION
        cycle = [
            signal.SIGTTIN,
            signal.SIGTTIN,
            signal.SIGTTOU,
            signal.SIGTTOU,
            signal.SIGTTOU,
            signal.SIGTTIN,
        ]
        while time.monotonic() < end:
            sig = cycle[steps % len(cycle)]
            n += 1 if sig == signal.SIGTTIN else -1
            sent_at.append((time.monotonic(), f"{sig.name}->{n}"))
            srv.signal(sig)
            steps += 1
            wait_workers(srv, n, f"after {sig.name}")
            wait_served(load, 10)
            # One signal a second: a slot is added (its worker booted and ready) before it may be
            # removed again. See test_ttou_right_after_ttin for the back-to-back case.
            pause(sent_at[-1][0] + 1.0 - time.monotonic())
        wait_served(load, 20)
    results = load.results
    duplicates, unexecuted = ledger_check(srv, results)
    add_row(
        chaos_results,
        "TTIN/TTOU",
        mode,
        results,
        sum(map(failed, results)),
        len(duplicates),
        f"{steps} signals (1/s), 1..4 workers; failures: {kinds(results)}",
    )
    assert steps >= 4
    assert [r for r in results if failed(r)] == [], timeline(results, sent_at)
    assert not duplicates and not unexecuted


def test_ttou_right_after_ttin(
    server: StartServer, mode: str, chaos_results: list[dict[str, Any]], request: pytest.FixtureRequest
) -> None:
    """A slot removed as soon as its worker process exists, before that worker is ready: the
    connections the kernel already queued on the new slot must still be served, and the
    removed slot's worker must go away."""
    srv = server(mode, workers=2)
    events: list[tuple[float, str]] = []
    rounds = 8
    stuck = ""
    with Load(srv.port, tag=f"ttinout-{mode}", rate=100, threads=8, path="/work?ms=3") as load:
        wait_served(load, 20)
        try:
            for _ in range(rounds):
                events.append((time.monotonic(), "TTIN"))
                srv.signal(signal.SIGTTIN)
                wait_for(lambda: len(srv.workers()) == 3, timeout=30, what="3 workers after TTIN")
                events.append((time.monotonic(), "TTOU"))
                srv.signal(signal.SIGTTOU)
                wait_for(lambda: len(srv.workers()) == 2, timeout=15, what="2 workers after TTOU")
                wait_served(load, 10)
            wait_served(load, 20)
        except AssertionError as exc:
            stuck = f"; STUCK: {exc}"
    results = load.results
    duplicates, unexecuted = ledger_check(srv, results)
    add_row(
        chaos_results,
        "TTOU right after TTIN",
        mode,
        results,
        sum(map(failed, results)),
        len(duplicates),
        f"{len(events) // 2} rounds; failures: {kinds(results)}{stuck}",
    )
    assert not stuck, stuck
    assert [r for r in results if failed(r)] == [], timeline(results, events)
    assert not duplicates and not unexecuted


# -- a worker that hangs ----------------------------------------------------------------------------


def test_hung_worker_is_aborted_with_its_stack(
    server: StartServer, mode: str, chaos_results: list[dict[str, Any]]
) -> None:
    srv = server(mode, "--timeout", "2", workers=2)
    before = set(srv.workers())
    with Load(srv.port, tag=f"hang-{mode}", rate=60, threads=6, path="/work?ms=3") as load:
        wait_served(load, 20)
        hang = socket.create_connection((HOST, srv.port), timeout=30)
        try:
            hang_port = hang.getsockname()[1]
            hang.sendall(b"GET /hang?s=30 HTTP/1.1\r\nHost: chaos\r\n\r\n")
            victim: int | None = None
            held: set[int] = set()
            if mode != "proxy":  # find the worker that holds the hanging request's connection

                def holder() -> int | None:
                    for pid in srv.workers():
                        if hang_port in snapshot_connections(pid, srv.port):
                            return pid
                    return None

                victim = wait_for(holder, timeout=2.0, what="the worker serving /hang")
                # Its event loop is blocked: it accepts nothing more, so what it holds until it
                # dies is what dies with it.
                until = time.monotonic() + 20
                while victim in srv.workers() and time.monotonic() < until:
                    held |= snapshot_connections(victim, srv.port)
                    time.sleep(0.05)
            wait_for(lambda: "WORKER TIMEOUT" in srv.text(), timeout=15, what="WORKER TIMEOUT")
        finally:
            hang.close()
        wait_for(
            lambda: len(srv.workers()) == 2 and len(before - set(srv.workers())) == 1,
            timeout=15,
            what="the hung worker replaced",
        )
        wait_served(load, 30)
    log = srv.text()
    results = load.results
    if mode == "proxy":
        bad = [r for r in results if failed(r)][1:]  # at most the one request the proxy had sent it
    else:
        bad = [r for r in results if failed(r) and r.lport not in held]
    duplicates, unexecuted = ledger_check(srv, results)
    add_row(
        chaos_results,
        "worker hangs (--timeout 2)",
        mode,
        results,
        len(bad),
        len(duplicates),
        f"victim held {len(held)} connections; failures: {kinds(results)}",
    )
    assert victim is None or victim not in srv.workers()
    assert re.search(
        r"WORKER TIMEOUT: worker \d+ \(pid \d+\) missed its heartbeat .* while serving GET /hang\?s=30", log
    ), log[-3000:]
    assert re.search(r'File ".*tests/chaos/apps\.py", line \d+ in _blocking_sleep', log), log[-3000:]
    assert not bad, [(r.kind, r.lport) for r in bad[:10]]
    assert not duplicates and not unexecuted


# -- a leak that triggers --max-rss -------------------------------------------------------------------


def test_leak_recycles_past_max_rss(
    server: StartServer, mode: str, chaos_results: list[dict[str, Any]]
) -> None:
    srv = server(mode, "--max-rss", "150", "--max-rss-jitter", "0.5", workers=2)
    first = set(srv.workers())
    with (
        Load(srv.port, tag=f"rss-{mode}", rate=60, threads=6, path="/work?ms=3") as load,
        Load(srv.port, tag=f"leak-{mode}", rate=5, threads=1, path="/leak?mb=10") as leak,
    ):
        wait_served(load, 20)
        end = time.monotonic() + DURATION
        # Until the deadline, or two recycles seen: enough to show it repeats.
        wait_for(
            lambda: srv.text().count("over --max-rss") >= 2 or time.monotonic() > end,
            timeout=DURATION + 5,
            what="recycles",
        )
        leak.stop()
        wait_for(lambda: "over --max-rss" in srv.text(), timeout=20, what="a recycle logged")
        wait_for(
            lambda: len(srv.workers()) == 2 and first - set(srv.workers()),
            timeout=30,
            what="a leaking worker replaced",
        )
        wait_served(load, 30)
    results = load.results + leak.results
    duplicates, unexecuted = ledger_check(srv, results)
    recycles = srv.text().count("over --max-rss")
    add_row(
        chaos_results,
        "leak past --max-rss 150",
        mode,
        results,
        sum(map(failed, results)),
        len(duplicates),
        f"{recycles} recycles, {len(leak.results)} x 10 MiB leaked; failures: {kinds(results)}",
        p99=p99_ms(load.results),
    )
    assert [r for r in results if failed(r)] == []
    assert not duplicates and not unexecuted


# -- 500 slowloris connections ------------------------------------------------------------------------


def test_slowloris_keeps_normal_p99_low(
    server: StartServer, mode: str, chaos_results: list[dict[str, Any]]
) -> None:
    hold = DURATION + 15
    srv = server(mode, "--header-timeout", str(hold + 30), "--worker-connections", "2000", workers=2)
    with Load(
        srv.port, tag=f"base-{mode}", rate=20, threads=2, path="/work?ms=1", keepalive=True, timeout=10
    ) as base:
        pause(min(5.0, DURATION / 4))  # a baseline sample at the same rate, for the notes
    with Slowloris(srv.port, n=500, interval=1.0, max_seconds=hold) as slow:
        assert slow.opened == 500, f"opened {slow.opened}, {slow.open_failures} failed"
        with Load(
            srv.port, tag=f"slow-{mode}", rate=20, threads=2, path="/work?ms=1", keepalive=True, timeout=10
        ) as load:
            pause(DURATION)
        still_open = slow.still_open()
    results = load.results
    p99 = p99_ms(results)
    duplicates, unexecuted = ledger_check(srv, results)
    add_row(
        chaos_results,
        "500 slowloris",
        mode,
        results,
        sum(map(failed, results)),
        len(duplicates),
        f"{still_open}/500 slow connections still open at the end, {slow.bytes_sent} bytes trickled; "
        f"p99 without them {p99_ms(base.results)} ms; failures: {kinds(results)}",
        p99=p99,
    )
    assert [r for r in results if failed(r)] == []
    assert len(results) >= DURATION * 20 * 0.5, "the normal traffic was not sent"
    assert p99 is not None and p99 < 50.0, f"p99 {p99} ms with 500 slowloris connections"
    assert not duplicates and not unexecuted


# -- a burst of 10x capacity ----------------------------------------------------------------------------


def test_burst_of_ten_times_capacity(
    server: StartServer, mode: str, chaos_results: list[dict[str, Any]]
) -> None:
    workers, concurrency, queue = 2, 4, 4
    capacity = workers * (concurrency + queue)
    srv = server(mode, "--max-concurrency", str(concurrency), "--queue-size", str(queue), workers=workers)
    n = 10 * capacity
    results: list[Result] = []
    lock = threading.Lock()
    go = threading.Barrier(n, timeout=30)

    def one(i: int) -> None:
        go.wait()
        r = one_request(srv.port, "POST", "/work?ms=300", f"burst-{mode}-{i}", timeout=30)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.1, t0 + 60 - time.monotonic()))
    hung = sum(t.is_alive() for t in threads)
    wall = time.monotonic() - t0
    # Afterwards the server serves normally again: within a few Retry-After periods (a shed
    # burst must not turn into an outage), then every request.
    t_end = time.monotonic()
    wait_for(
        lambda: one_request(srv.port, "GET", "/work?ms=1", timeout=10).status == 200,
        timeout=5,
        what="a 200 within 5 s of the burst",
    )
    recovery = time.monotonic() - t_end
    after = [one_request(srv.port, "GET", "/work?ms=1", timeout=10) for _ in range(20)]
    ok = [r for r in results if r.kind == "ok" and r.status == 200]
    refused = [r for r in results if r.kind == "ok" and r.status == 503]
    wrong = [r for r in results if not (r in ok or (r in refused and r.retry_after))]
    counts = srv.ledger_counts()
    executed_refusals = [r.rid for r in refused if counts[r.rid]]
    duplicates, unexecuted = ledger_check(srv, results)
    add_row(
        chaos_results,
        "burst 10x capacity",
        mode,
        results,
        len(wrong),
        len(duplicates),
        f"capacity {capacity} ({workers} workers x (max-concurrency {concurrency} + queue {queue})), "
        f"{len(ok)} x 200, {len(refused)} x 503, {len(wrong)} other, {hung} hung, all done in {wall:.1f} s, "
        f"serving again {recovery:.1f} s later; "
        f"other: {kinds(wrong)}",
        n_failed=len(wrong) + hung,
    )
    assert hung == 0, f"{hung} requests still running after 60 s"
    assert len(results) == n
    assert not wrong, [(r.kind, r.status, r.retry_after) for r in wrong[:10]]
    assert ok, "nothing was served"
    assert not executed_refusals, f"refused with 503 but executed: {executed_refusals[:10]}"
    assert not duplicates and not unexecuted
    assert [r.status for r in after] == [200] * 20, kinds(after)
