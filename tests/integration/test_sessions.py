"""prefork_lb.sessions under a real server: one session across workers, a SIGKILLed worker's
replacement and two servers ("hosts"), kept in a real redis-server or memcached; a store that
stops answering is a clear 503 from the demo app (tests/apps_sessions.py), not a hang."""

from __future__ import annotations

import http.client
import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from http.cookiejar import CookieJar

import pytest

from tests.helpers import wait_for
from tests.integration.conftest import StartServer
from tests.server import ServerProcess
from tests.stores import StoreProcess

APP = "tests.apps_sessions:app"
MAX_REQUESTS = 300  # ample for new connections to land on both workers (the kernel hashes them)


class Browser:
    """A client with a cookie jar; every request on a new connection (so reuseport spreads them)."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.jar = CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.timeout = timeout

    def get(self, url: str) -> tuple[int, bytes]:
        try:
            with self.opener.open(url, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.read()

    def count(self, srv: ServerProcess) -> dict[str, object]:
        status, body = self.get(srv.url + "/count")
        assert status == 200, (status, body, srv.log_text())
        answer: dict[str, object] = json.loads(body)
        return answer


@pytest.fixture(params=["redis", "memcached"])
def store(request: pytest.FixtureRequest) -> StoreProcess:
    fixture: StoreProcess = request.getfixturevalue(f"{request.param}_server")
    return fixture


def serve(start_server: StartServer, store: StoreProcess, workers: int = 2, **env: str) -> ServerProcess:
    srv = start_server(
        APP,
        "-w",
        str(workers),
        "--dispatch",
        "reuseport",
        env={"PREFORK_LB_TEST_SESSION_STORE": store.url, **env},
    )
    wait_for(lambda: len(srv.children_titled("worker")) == workers, 20.0, f"{workers} workers")
    return srv


def count_until(
    browser: Browser, srv: ServerProcess, start: int, done: Callable[[set[int]], object]
) -> tuple[int, set[int]]:
    """Count from ``start`` (each answer must be the next number) until ``done(pids seen)``."""
    seen: set[int] = set()
    n = start
    for _ in range(MAX_REQUESTS):
        answer = browser.count(srv)
        assert answer["count"] == n, (answer, n)
        seen.add(int(str(answer["pid"])))
        n += 1
        if done(seen):
            return n, seen
    raise AssertionError(f"after {MAX_REQUESTS} requests only these workers answered: {seen}")


def test_one_session_across_workers_and_a_sigkilled_workers_replacement(
    start_server: StartServer, store: StoreProcess
) -> None:
    srv = serve(start_server, store)
    first = set(srv.children_titled("worker"))
    browser = Browser()
    n, seen = count_until(browser, srv, 1, lambda seen: seen == first)
    victim = first.pop()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in srv.children_titled("worker"), 20.0, "the killed worker to be reaped")
    # The counter goes on, on the surviving worker and on the killed one's replacement.
    n, seen = count_until(browser, srv, n, lambda seen: seen - first - {victim})
    assert victim not in seen


def test_two_servers_sharing_one_redis_see_the_same_session(
    start_server: StartServer, redis_server: StoreProcess
) -> None:
    hosts = [serve(start_server, redis_server, workers=1) for _ in range(2)]
    pids = [set(h.children_titled("worker")) for h in hosts]
    browser = Browser()  # one cookie jar: cookies are not per port, as they would be per host
    for n in range(1, 11):
        index = n % 2
        answer = browser.count(hosts[index])
        assert answer["count"] == n
        assert answer["pid"] in pids[index]


def test_a_stopped_store_is_a_clear_error_not_a_hang(start_server: StartServer, store: StoreProcess) -> None:
    srv = serve(start_server, store)
    browser = Browser(timeout=10.0)  # the store's timeout is 1 s (tests/apps_sessions.py)
    n, _ = count_until(browser, srv, 1, lambda seen: True)
    store.pause()
    try:
        status, body = browser.get(srv.url + "/count")
    finally:
        store.resume()
    assert status == 503, (status, body)
    assert f"session store error: session store {store.url}" in body.decode(), body
    # The failed request left the client's cookie alone: the session is back with its store.
    assert browser.count(srv)["count"] == n


def test_on_error_empty_serves_an_empty_session_while_redis_is_gone(
    start_server: StartServer, redis_server: StoreProcess
) -> None:
    srv = serve(start_server, redis_server, PREFORK_LB_TEST_SESSION_ON_ERROR="empty")
    browser = Browser(timeout=10.0)
    count_until(browser, srv, 1, lambda seen: True)
    assert browser.count(srv)["count"] == 2
    redis_server.stop()
    answer = browser.count(srv)
    assert answer == {"count": 1, "pid": answer["pid"], "unavailable": True}


def set_cookie_over(srv: ServerProcess, forwarded_proto: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("GET", "/count", headers={"X-Forwarded-Proto": forwarded_proto})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        return resp.getheader("Set-Cookie") or ""
    finally:
        conn.close()


@pytest.mark.parametrize("trusted", [True, False])
def test_the_cookie_is_secure_when_a_trusted_proxy_says_https(
    start_server: StartServer, redis_server: StoreProcess, trusted: bool
) -> None:
    allow = "127.0.0.1" if trusted else "10.9.9.9"
    srv = start_server(
        APP, "--forwarded-allow-ips", allow, env={"PREFORK_LB_TEST_SESSION_STORE": redis_server.url}
    )
    cookie = set_cookie_over(srv, "https")
    assert cookie.startswith("session=") and "; HttpOnly" in cookie and cookie.endswith("; SameSite=Lax")
    assert ("; Secure" in cookie) is trusted, cookie
    assert "; Secure" not in set_cookie_over(srv, "http")
