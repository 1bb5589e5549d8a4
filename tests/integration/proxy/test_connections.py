"""Client and upstream connections: pipelining, the --max-connections queue, upstream pools, graceful
stop. See tests/integration/proxy/driver.py for the processes and clients; conftest.py for the
fixtures.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import unread_requests, wait_for
from tests.integration.proxy.driver import Client, ProxyProcess, connect, http_request, stats_for
from tests.server import HTTPStream, Response, build_request, exchange, parse_responses


def test_pipelined_requests_are_answered_in_order(start_proxy, backends) -> None:
    bs = backends(2)
    p = start_proxy(bs, "--strategy", "round_robin", "--health-check-interval", "0")
    with connect(p.port) as sock:
        sock.sendall(b"".join(build_request("GET", f"/p{i}") for i in range(1, 4)))
        stream = HTTPStream(sock)
        rs = [stream.read_response() for _ in range(3)]
    assert [r.status for r in rs] == [200] * 3
    assert [r.header("x-request-target") for r in rs] == ["/p1", "/p2", "/p3"]


def test_half_closed_client_gets_its_response_and_a_close(start_proxy, backends) -> None:
    """A client that shuts its sending side after the request (HTTP/1.0 style tools do) gets
    the response, then the proxy closes: no connection left open for --keep-alive."""
    b = backends(1, delay=0.2)[0]  # the EOF arrives while the exchange is in progress
    p = start_proxy([b], "--health-check-interval", "0", "--keep-alive", "30")
    got = exchange(p.port, build_request("GET", "/half"), 3)
    responses, _ = parse_responses(got)
    assert [r.status for r in responses] == [200], got
    assert got.closed, f"still open {got.elapsed:.1f} s after the response"


def test_queue_full_then_503_with_retry_after(start_proxy, backends) -> None:
    b = backends(1)[0]
    # A 1 s queue timeout: long enough for /lb-stats to show the connection waiting first.
    p = start_proxy([b], "--health-check-interval", "0", "--max-connections", "2", "--queue-timeout", "1")
    c1, c2 = Client(p.port), Client(p.port)
    try:
        assert c1.request().status == 200 and c2.request().status == 200
        with connect(p.port) as third:
            third.sendall(build_request("GET", "/"))
            # Queued first, refused when the queue timeout ends: the order proves it was the timeout.
            wait_for(lambda: p.stats()["queued"] == 1, 3, "one queued connection")
            r = HTTPStream(third).read_response(timeout=5)
        assert r.status == 503 and r.header("retry-after") == "1", r
    finally:
        c1.close()
        c2.close()


def test_queued_connection_is_served_when_a_slot_frees(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--max-connections", "2", "--queue-timeout", "3")
    c1, c2 = Client(p.port), Client(p.port)
    try:
        assert c1.request().status == 200 and c2.request().status == 200
        with connect(p.port) as third:
            third.sendall(build_request("GET", "/third"))
            stream = HTTPStream(third)
            assert not stream.wait_bytes(b"\r\n", 0.3), "the third connection was served past the limit"
            wait_for(lambda: p.stats()["queued"] == 1, 3, "one queued connection")
            c1.close()
            r = stream.read_response(timeout=3)
            assert r.status == 200 and r.header("x-request-target") == "/third", r
    finally:
        c1.close()
        c2.close()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_request_from_a_client_that_left_the_queue_never_reaches_a_backend(
    start_proxy, backends, how: str
) -> None:
    """A client sends its request while its connection waits under --max-connections, then
    closes (or resets) it. When a place frees, nothing it sent goes to the backend."""
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--max-connections", "1", "--queue-timeout", "10")
    holder = Client(p.port)
    try:
        assert holder.request("GET", "/first").status == 200
        gone = connect(p.port)
        gone.sendall(build_request("GET", "/gone"))
        wait_for(lambda: p.stats()["queued"] == 1, 3, "the connection queued")
        if how == "reset":
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()
        holder.close()  # a place frees: the queued connection is the next to get it
        wait_for(lambda: p.stats()["queued"] == 0, 5, "the queue emptied")
        r = http_request(p.port, "GET", "/after")
        assert r.status == 200, r
    finally:
        holder.close()
    assert [r.target for r in b.seen()] == ["/first", "/after"]
    assert p.stats()["requests"] == 2


def test_upstream_connections_are_reused(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    for _ in range(10):  # ten client connections, one after the other
        assert http_request(p.port).status == 200
    assert b.accepted <= 2, f"{b.accepted} backend connections for 10 sequential requests"


def test_upstream_keepalive_zero_keeps_no_idle_connection(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--upstream-keepalive", "0")
    for _ in range(5):
        assert http_request(p.port).status == 200
    assert b.accepted == 5


def test_term_lets_an_in_flight_request_finish(start_proxy, backends) -> None:
    b = backends(1, delay=1.0)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    result: list[Any] = []

    def one() -> None:
        try:
            result.append(http_request(p.port, "GET", "/slow", timeout=8))
        except (OSError, AssertionError) as exc:
            result.append(exc)

    t = threading.Thread(target=one)
    t.start()
    wait_for(lambda: b.in_flight == 1, 5, "the request at the backend")
    os.kill(p.pid, signal.SIGTERM)
    t.join(10)
    assert p.proc is not None and p.proc.wait(10) == 0, p.text()
    assert len(result) == 1 and isinstance(result[0], Response) and result[0].status == 200, result


def test_term_closes_idle_keepalive_connections_and_exits(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--keep-alive", "30")
    with Client(p.port) as c:
        assert c.request().status == 200
        os.kill(p.pid, signal.SIGTERM)
        assert c.stream.closed_by_server(5), "the idle connection was kept open"
        assert p.proc is not None and p.proc.wait(10) == 0, p.text()


def burst_rounds(
    p: ProxyProcess,
    target: str,
    clients: int = 16,
    rounds: int = 40,
    until: Callable[[], bool] = lambda: False,
) -> list[Response]:
    """Rounds of ``clients`` connections that each send one GET while the proxy process is
    stopped (SIGSTOP), so that it reads them all in one pass of its loop when it goes on
    (SIGCONT), and then read their responses; stops early once ``until()`` holds. Returns every
    response."""
    pid = p.proxy_pid() or p.pid
    got: list[Response] = []
    socks = [connect(p.port) for _ in range(clients)]
    try:
        streams = [HTTPStream(s) for s in socks]
        request = build_request("GET", target)
        for _ in range(rounds):
            os.kill(pid, signal.SIGSTOP)
            try:
                for s in socks:
                    s.sendall(request)
                wait_for(lambda: unread_requests({p.port}) == clients, 5, "every request held unread")
            finally:
                os.kill(pid, signal.SIGCONT)
            got.extend(st.read_response() for st in streams)
            if until():
                break
    finally:
        for s in socks:
            s.close()
    return got


@pytest.mark.parametrize("target", ["/const", "/"])
def test_simultaneous_gets_share_a_backend_connection_and_each_gets_one_answer(
    start_proxy, backends, target: str
) -> None:
    # /const: the same response head every time (relayed from the proxy's memo); /: a head with
    # a sequence number (parsed each time).
    [b] = backends(1)
    p = start_proxy([b], "--health-check-interval", "0", "--upstream-pipeline-latency", "5")
    assert http_request(p.port, "GET", target).status == 200  # the head becomes known, and fast
    got = burst_rounds(p, target, until=lambda: stats_for(p.stats(), b.addr)["pipelined"] >= 5)
    s = stats_for(p.stats(), b.addr)
    assert s["pipelined"] >= 5, s
    assert [r.status for r in got] == [200] * len(got)
    assert {r.body for r in got} == {b"b0"}
    # Each request reached the backend exactly once, and nothing was retried.
    assert len([r for r in b.requests if r.target == target]) == len(got) + 1
    assert s["errors"] == 0 and s["retries"] == 0 and s["requests"] == len(got) + 1
    if target == "/":
        seqs = sorted(int(r.header("x-request-seq") or "0") for r in got)
        assert len(set(seqs)) == len(got), "a response was delivered twice"


def test_upstream_pipeline_1_sends_one_request_per_connection_at_a_time(start_proxy, backends) -> None:
    [b] = backends(1)
    p = start_proxy([b], "--health-check-interval", "0", "--upstream-pipeline", "1")
    http_request(p.port, "GET", "/const")
    got = burst_rounds(p, "/const", rounds=10)
    assert [r.status for r in got] == [200] * len(got)
    assert stats_for(p.stats(), b.addr)["pipelined"] == 0


def test_slow_answers_are_never_pipelined(start_proxy, backends) -> None:
    # Answered in 30 ms (over the 10 ms bound): a request is never made to wait behind one.
    [b] = backends(1, delay=0.03)
    p = start_proxy([b], "--health-check-interval", "0")
    http_request(p.port, "GET", "/const")
    got = burst_rounds(p, "/const", clients=8, rounds=5)
    assert [r.status for r in got] == [200] * len(got)
    assert stats_for(p.stats(), b.addr)["pipelined"] == 0


def test_answers_that_close_the_connection_are_never_pipelined(start_proxy, backends) -> None:
    [b] = backends(1)
    p = start_proxy([b], "--health-check-interval", "0")
    http_request(p.port, "GET", "/close")
    got = burst_rounds(p, "/close", clients=8, rounds=5)
    assert [r.status for r in got] == [200] * len(got)
    s = stats_for(p.stats(), b.addr)
    assert s["pipelined"] == 0 and s["errors"] == 0, s


def test_pipelined_gets_behind_a_dying_connection_are_sent_again(start_proxy, backends) -> None:
    # The backend answers two requests on each connection and then drops it without answering
    # the rest. After the first round, connections wait in the pool with one answer to go; the
    # eight GETs of the second round (read in one pass) go on one, pipelined behind the first.
    # Those behind it never got a byte, so they go again (on connections of their own) and every
    # client still gets a 200.
    [b] = backends(1, answers_per_connection=2)
    # A retried GET takes long: a latency bound of 5 s keeps the loaded machine's timing out of
    # whether GETs are pipelined.
    p = start_proxy(
        [b],
        *("--health-check-interval", "0", "--retries", "3", "--retry-budget", "1"),
        *("--upstream-pipeline-latency", "5"),
    )
    http_request(p.port, "GET", "/const")
    got = burst_rounds(p, "/const", clients=8, rounds=2)
    s = stats_for(p.stats(), b.addr)
    assert [r.status for r in got] == [200] * 16
    # About seven of each: how many exactly depends on which pooled connections the backend had
    # closed (unseen yet) when the round came.
    assert s["pipelined"] >= 3 and s["retries"] >= 3, s
