"""Request ids and JSON access logs in the proxy: the id the backend gets (one, the canonical
one), the id the client gets back, the proxy's JSON log lines; in front of a real worker and
with ``--dispatch proxy``, the id the app saw. See conftest.py for the fixtures."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.helpers import wait_for
from tests.integration.proxy.backends import refused_port
from tests.integration.proxy.driver import ProxyProcess, connect, http_request
from tests.server import HTTPStream, Response

GENERATED = re.compile(r"[0-9a-f]{12}-[0-9]+")
APP = "tests.apps:request_id"


def log_records(path: Path, n: int) -> list[dict[str, Any]]:
    """The access log's lines once there are at least ``n``, each parsed as JSON."""
    lines = wait_for(
        lambda: path.exists() and len(text := path.read_text().splitlines()) >= n and text,
        10,
        f"{n} access log lines",
    )
    return [json.loads(line) for line in lines]


def raw_request(port: int, data: bytes) -> Response:
    with connect(port) as sock:
        sock.sendall(data)
        return HTTPStream(sock).read_final()[1]


def json_proxy(start_proxy, backends: Any, path: Path, *flags: str) -> ProxyProcess:
    return start_proxy(
        backends,
        "--health-check-interval",
        "0",
        "--access-logfile",
        str(path),
        "--access-logformat",
        "json",
        *flags,
    )


def test_the_proxy_generates_an_id_and_the_backend_gets_it(start_proxy, backends, tmp_path: Path) -> None:
    b = backends(1)[0]
    log = tmp_path / "access.log"
    p = json_proxy(start_proxy, [b], log, "--request-id", "true")
    r = http_request(p.port, target="/gen?x=1", headers=[("User-Agent", "probe/1")])
    assert r.status == 200
    (rid,) = r.header_list("x-request-id")
    assert GENERATED.fullmatch(rid), rid
    (seen,) = b.seen("/gen")
    assert seen.header_list("x-request-id") == [rid]
    (rec,) = log_records(log, 1)
    assert rec["http.request.id"] == rid
    assert rec["prefork_lb.backend"] == b.addr
    assert rec["http.request.method"] == "GET" and rec["url.path"] == "/gen" and rec["url.query"] == "x=1"
    assert rec["http.response.status_code"] == 200 and rec["http.response.body.size"] == len(r.body)
    assert rec["user_agent.original"] == "probe/1" and rec["client.address"] == "127.0.0.1"
    assert rec["process.pid"] == p.proxy_pid()


def test_a_valid_id_is_passed_on_and_an_invalid_one_replaced(start_proxy, backends, tmp_path: Path) -> None:
    b = backends(1)[0]
    log = tmp_path / "access.log"
    p = json_proxy(start_proxy, [b], log, "--request-id", "true")
    r = http_request(p.port, target="/valid", headers=[("X-Request-ID", "client-id-1")])
    assert r.header_list("x-request-id") == ["client-id-1"]
    assert b.seen("/valid")[0].header_list("x-request-id") == ["client-id-1"]
    r = raw_request(p.port, b'GET /invalid HTTP/1.1\r\nHost: h\r\nX-Request-ID: a"b\\c \xff\r\n\r\n')
    (rid,) = r.header_list("x-request-id")
    assert GENERATED.fullmatch(rid), rid
    assert b.seen("/invalid")[0].header_list("x-request-id") == [rid]  # the client's is not passed on
    records = log_records(log, 2)
    assert [rec["http.request.id"] for rec in records] == ["client-id-1", rid]


def test_by_default_only_a_valid_incoming_id_is_passed_on(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    r = http_request(p.port, target="/none")
    assert r.header("x-request-id") is None and not b.seen("/none")[0].has("x-request-id")
    r = http_request(p.port, target="/valid", headers=[("X-Request-ID", "abc:1")])
    assert r.header_list("x-request-id") == ["abc:1"] and b.seen("/valid")[0].header_list("x-request-id") == [
        "abc:1"
    ]
    r = http_request(p.port, target="/invalid", headers=[("X-Request-ID", "a b")])
    assert r.header("x-request-id") is None and not b.seen("/invalid")[0].has("x-request-id")


def test_hostile_header_values_stay_in_one_json_line(start_proxy, backends, tmp_path: Path) -> None:
    b = backends(1)[0]
    log = tmp_path / "access.log"
    p = json_proxy(start_proxy, [b], log)
    agent = b'q" \\ "} \t\xff\xfe\xc3('
    data = b"GET /h%0Ax%22 HTTP/1.1\r\nHost: h\r\nUser-Agent: " + agent + b'\r\nReferer: \\"\r\n\r\n'
    assert raw_request(p.port, data).status == 200
    assert http_request(p.port, target="/after").status == 200
    first, second = log_records(log, 2)
    assert len(log.read_text().splitlines()) == 2
    assert first["user_agent.original"] == agent.decode("utf-8", "backslashreplace")
    assert first["http.request.header.referer"] == '\\"'
    assert first["url.path"] == "/h%0Ax%22"  # the proxy logs the target as it came
    assert second["url.path"] == "/after"


def test_the_proxys_own_error_carries_the_id(start_proxy, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    p = json_proxy(start_proxy, [f"127.0.0.1:{refused_port()}"], log, "--retries", "0")
    r = http_request(p.port, target="/down", headers=[("X-Request-ID", "err-1")])
    assert r.status in (502, 503) and r.header_list("x-request-id") == ["err-1"]
    (rec,) = log_records(log, 1)
    assert rec["http.request.id"] == "err-1" and rec["http.response.status_code"] == r.status


def test_in_front_of_a_worker_the_app_sees_the_proxys_id(start_proxy, start_server) -> None:
    """A prefork_lb server behind the proxy takes the proxy's id and makes no second one; the
    client gets that id once, though the server answers with it too."""
    srv = start_server(APP)  # it would not generate one: the proxy's is the only one
    p = start_proxy([f"127.0.0.1:{srv.port}"], "--health-check-interval", "0", "--request-id", "true")
    for headers in ([], [("X-Request-ID", "from-client")]):
        r = http_request(p.port, target="/", headers=headers)
        assert r.status == 200
        (rid,) = r.header_list("x-request-id")
        got = r.json()
        assert got["canonical"] == got["incoming"] == rid
        assert rid == "from-client" if headers else GENERATED.fullmatch(rid)


def test_integrated_mode_one_id_from_proxy_to_app(start_proxy, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    p = start_proxy(
        None,
        "--dispatch",
        "proxy",
        "--workers",
        "1",
        "--access-logfile",
        str(log),
        "--access-logformat",
        "json",
        "--request-id",
        "true",
        app=APP,
    )
    wait_for(lambda: p.health()[1]["healthy"] == 1, 10, "the worker healthy")
    rids = []
    for _ in range(3):
        r = http_request(p.port, target="/integrated")
        (rid,) = r.header_list("x-request-id")
        got = r.json()
        assert GENERATED.fullmatch(rid) and got["canonical"] == got["incoming"] == rid
        rids.append((rid, got["pid"]))
    assert len({rid for rid, _ in rids}) == 3

    def ours() -> list[dict[str, Any]]:  # (health checks reach the worker's log too)
        return [rec for rec in log_records(log, 1) if rec["url.path"] == "/integrated"]

    records = wait_for(lambda: len(got := ours()) >= 6 and got, 10, "a line from each process per request")
    by_pid: dict[int, list[str]] = {}
    for rec in records:
        by_pid.setdefault(rec["process.pid"], []).append(rec["http.request.id"])
    # The proxy and the worker each write a line per request, and both have the id the
    # client got: the two lines of one request can be found together.
    assert set(by_pid) == {p.proxy_pid(), rids[0][1]}, by_pid
    assert all(sorted(ids) == sorted(rid for rid, _ in rids) for ids in by_pid.values()), by_pid


def test_answers_from_the_cache_carry_the_request_id_and_are_counted_and_logged(
    start_proxy, backends, tmp_path: Path
) -> None:
    b = backends(1)[0]
    log = tmp_path / "access.log"
    p = json_proxy(start_proxy, [b], log, "--request-id", "true", "--cache-size", "1")
    t = "/with-headers?h=Cache-Control:%20max-age%3D60"
    first = http_request(p.port, target=t)
    assert first.header("cache-status") == "prefork_lb; fwd=uri-miss; stored"
    hits = [http_request(p.port, target=t), http_request(p.port, method="HEAD", target=t)]
    hits.append(http_request(p.port, target=t, headers=[("X-Request-ID", "client-id-7")]))
    assert all((r.header("cache-status") or "").startswith("prefork_lb; hit;") for r in hits)
    assert len(b.seen("/with-headers")) == 1
    ids = [r.header_list("x-request-id") for r in [first, *hits]]
    assert all(len(i) == 1 for i in ids) and ids[3] == ["client-id-7"], ids
    assert all(GENERATED.fullmatch(i[0]) for i in ids[:3]) and len({i[0] for i in ids}) == 4, ids
    # Counted as requests and logged as forwarded ones are, with "cache" for the backend.
    assert p.stats()["requests"] == 4
    records = log_records(log, 4)
    assert [rec["prefork_lb.backend"] for rec in records] == [b.addr, "cache", "cache", "cache"]
    assert [rec["http.request.id"] for rec in records] == [i[0] for i in ids]
    assert [rec["http.request.method"] for rec in records] == ["GET", "GET", "HEAD", "GET"]
    assert [rec["http.response.status_code"] for rec in records] == [200] * 4
    assert (
        records[1]["http.response.body.size"] == len(hits[0].body)
        and records[1]["url.path"] == "/with-headers"
    )
