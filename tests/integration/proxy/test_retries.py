"""Failing backends and retries: killed, closing, hung, malformed and refused backends; which requests
are retried. See tests/integration/proxy/driver.py for the processes and clients; conftest.py for
the fixtures.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from tests.helpers import HOST, wait_for
from tests.integration.proxy.backends import refused_port
from tests.integration.proxy.driver import FAST_HEALTH, BackendProcess, Client, Load, http_request, stats_for
from tests.server import build_request, exchange, parse_responses


def test_killed_backend_under_load_fails_no_get(start_proxy) -> None:
    procs = [BackendProcess(f"k{i}") for i in range(3)]
    try:
        p = start_proxy(procs, "--strategy", "round_robin", *FAST_HEALTH)
        p.wait_healthy(3)
        with Load(p.port, threads=3, limit=600, seconds=3.0) as load:
            load.wait_more(100)
            procs[0].kill()
            load.wait_more(150)
        assert load.failures == [], load.failures[:10]
        wait_for(lambda: p.backend_health(procs[0].addr) is False, 5, "the killed backend marked down")
        status, health = p.health()
        assert status == 200 and health["status"] == "degraded" and health["healthy"] == 2, health
    finally:
        for b in procs:
            b.kill()


def test_post_to_a_backend_that_closes_is_502_and_not_retried(start_proxy, backends) -> None:
    drop = backends(1, mode="drop")[0]
    ok = backends(1)[0]
    p = start_proxy([drop, ok], "--strategy", "round_robin", "--health-check-interval", "0")
    answers = {}
    for i in range(4):
        body = f"order-{i}".encode()
        answers[body] = http_request(p.port, "POST", "/orders", body=body)
    failed = [body for body, r in answers.items() if r.status != 200]
    assert failed, answers
    for body in failed:
        assert answers[body].status == 502, answers
        assert [r.body for r in drop.seen()].count(body) == 1
        assert body not in [r.body for r in ok.seen()]
    assert sorted(r.body for r in ok.seen()) == sorted(b for b in answers if b not in failed)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_idempotent_request_to_a_backend_that_closes_is_retried(start_proxy, backends, method: str) -> None:
    drop = backends(1, mode="drop")[0]
    ok = backends(1)[0]
    p = start_proxy([drop, ok], "--strategy", "round_robin", "--health-check-interval", "0")
    for i in range(2):
        body = f"{method}-{i}".encode() if method == "PUT" else b""
        r = http_request(p.port, method, f"/item/{i}", body=body)
        assert r.status == 200 and r.body == b"b1", r
    assert [r.target for r in ok.seen()] == ["/item/0", "/item/1"]
    assert drop.seen(), "the closing backend was never tried"  # each try there was tried again on ok
    if method == "PUT":
        assert ok.seen()[0].body == b"PUT-0" and ok.seen()[1].body == b"PUT-1"


def test_get_not_retried_with_retries_zero(start_proxy, backends) -> None:
    drop = backends(1, mode="drop")[0]
    p = start_proxy([drop], "--health-check-interval", "0", "--retries", "0")
    r = http_request(p.port)
    assert r.status == 502, r
    assert len(drop.seen()) == 1


def test_post_after_backend_idle_close_is_not_lost(start_proxy, backends) -> None:
    """The backend closes idle keep-alive connections after 0.3 s; a POST 0.6 s later must
    not be sent on the dead pooled connection."""
    b = backends(1, idle_timeout=0.3)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    for i in range(3):
        r = http_request(p.port, "POST", "/sha", body=b"p%d" % i)
        assert r.status == 200, r
        if i < 2:
            time.sleep(0.6)  # the backend's idle timeout passes (what is tested is that wait)
    assert len(b.seen()) == 3


def test_backend_that_never_answers_gives_504(start_proxy, backends) -> None:
    hang = backends(1, mode="hang")[0]
    p = start_proxy([hang], "--upstream-timeout", "1", "--health-check-interval", "0")
    r = http_request(p.port, timeout=8)
    # Only --upstream-timeout produces the 504: the hung backend never answers.
    assert r.status == 504, r


def test_malformed_backend_response_gives_502(start_proxy, backends) -> None:
    bad = backends(1, mode="malformed")[0]
    p = start_proxy([bad], "--health-check-interval", "0")
    r = http_request(p.port)
    assert r.status == 502, r
    assert b"nonsense" not in r.body


@pytest.mark.parametrize("path", ["/dup-cl", "/cl-te", "/bad-chunk", "/short", "/space-name"])
def test_broken_response_framing_never_reaches_the_client_as_a_whole_response(
    start_proxy, backends, path: str
) -> None:
    """Ambiguous or broken framing from a backend: a 502 when nothing was sent yet, otherwise a
    response the client can tell is incomplete; never a complete 2xx made of guesswork."""
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--retries", "0")
    got = exchange(p.port, build_request("GET", path), 5)
    assert got.closed, got
    responses, _ = parse_responses(got)
    assert len(responses) <= 1, responses
    if responses and responses[0].status != 502:
        assert not responses[0].complete, responses[0]
    if path in ("/dup-cl", "/cl-te", "/space-name"):
        assert [r.status for r in responses] == [502], got


def test_all_backends_down_gives_503_at_once(start_proxy) -> None:
    ports = [f"{HOST}:{refused_port()}" for _ in range(2)]
    p = start_proxy(ports, *FAST_HEALTH)
    first = http_request(p.port, timeout=5)
    assert first.status in (502, 503), first
    wait_for(lambda: p.health()[1]["healthy"] == 0, 5, "both backends down")
    status, health = p.health()
    assert status == 503 and health["status"] == "down" and health["total"] == 2, health
    assert all(b["healthy"] is False for b in health["backends"])
    r = http_request(p.port)
    # At once: refused before any backend is tried (trying the refused ports would give 502).
    assert r.status == 503, r


def test_refused_backend_is_retried_on_another(start_proxy, backends) -> None:
    ok = backends(1)[0]
    p = start_proxy(
        [f"{HOST}:{refused_port()}", ok.addr], "--strategy", "round_robin", "--health-check-interval", "0"
    )
    rs = [http_request(p.port) for _ in range(6)]
    assert [r.status for r in rs] == [200] * 6, rs
    assert len(ok.seen()) == 6


def test_post_to_a_refused_backend_is_retried(start_proxy, backends) -> None:
    ok = backends(1)[0]
    p = start_proxy(
        [f"{HOST}:{refused_port()}", ok.addr], "--strategy", "round_robin", "--health-check-interval", "0"
    )
    for i in range(4):
        r = http_request(p.port, "POST", "/sha", body=b"body%d" % i)
        assert r.status == 200 and r.body.decode() == hashlib.sha256(b"body%d" % i).hexdigest(), r
    assert len(ok.seen()) == 4


def test_retries_zero_refused_backend_is_an_error(start_proxy, backends) -> None:
    ok = backends(1)[0]
    p = start_proxy(
        [f"{HOST}:{refused_port()}", ok.addr],
        "--strategy",
        "round_robin",
        "--health-check-interval",
        "0",
        "--retries",
        "0",
    )
    statuses = sorted(http_request(p.port).status for _ in range(2))
    assert statuses[0] == 200 and statuses[1] in (502, 503), statuses


@pytest.mark.parametrize("retries", ["0", "2"])
def test_a_pooled_connection_the_backend_closed_is_sent_again_fresh_to_the_same_backend(
    start_proxy, backends, retries: str
) -> None:
    """The only backend closes each keep-alive connection when the next request arrives on
    it, before a byte of an answer: every GET is still answered by that backend (on a new
    connection), whatever --retries says, and the backend is not counted as failing."""
    [b] = backends(1, close_reused=True)
    p = start_proxy([b], "--health-check-interval", "0", "--retries", retries)
    with Client(p.port) as c:
        statuses = [c.request("GET", f"/n{i}").status for i in range(5)]
    assert statuses == [200] * 5, statuses
    assert [r.target for r in b.seen()] == [f"/n{i}" for i in range(5)]
    s = stats_for(p.stats(), b.addr)
    assert s["errors"] == 0 and s["responses"]["2xx"] == 5, s
    assert p.backend_health(b.addr) is True
