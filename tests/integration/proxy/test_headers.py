"""Forwarding and hop-by-hop headers: Forwarded / X-Forwarded-*, trusted and untrusted peers, --lb-
headers, IPv6. See tests/integration/proxy/driver.py for the processes and clients; conftest.py for
the fixtures.
"""

from __future__ import annotations

import socket

import pytest

from tests.helpers import free_port_v6
from tests.integration.proxy.driver import forwarded_elements, http_request
from tests.server import HTTPStream, build_request


def test_forwarding_headers_reach_the_backend(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    r = http_request(p.port, "GET", "/x?y=1", host="example.test:8080")
    assert r.status == 200
    seen = b.seen()[-1]
    assert seen.target == "/x?y=1" and seen.version == "HTTP/1.1"
    assert seen.header("host") == "example.test:8080"
    assert seen.header_list("x-forwarded-for") == ["127.0.0.1"]
    assert seen.header("x-forwarded-proto") == "http"
    assert seen.header("x-forwarded-host") == "example.test:8080"
    assert forwarded_elements(seen.header("forwarded") or "") == [
        {"for": "127.0.0.1", "proto": "http", "host": "example.test:8080"}
    ]
    assert "1.1 prefork_lb" in (seen.header("via") or "")
    assert seen.header("x-forwarded-by") == "prefork_lb"
    assert r.header("x-backend-server") == b.addr
    assert "1.1 prefork_lb" in (r.header("via") or "")


SPOOFED = [
    ("X-Forwarded-For", "1.2.3.4"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.test"),
    ("Forwarded", "for=1.2.3.4;proto=https"),
]


@pytest.mark.parametrize("allow", ["", "10.0.0.1"])
def test_untrusted_peer_forwarding_headers_are_replaced(start_proxy, backends, allow: str) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--forwarded-allow-ips", allow)
    assert http_request(p.port, headers=SPOOFED).status == 200
    seen = b.seen()[-1]
    assert seen.header_list("x-forwarded-for") == ["127.0.0.1"]
    assert seen.header("x-forwarded-proto") == "http"
    assert seen.header("x-forwarded-host") == "127.0.0.1"
    fwd = forwarded_elements(seen.header("forwarded") or "")
    assert fwd == [{"for": "127.0.0.1", "proto": "http", "host": "127.0.0.1"}], fwd


def test_trusted_peer_forwarding_headers_are_appended_to(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")  # default: 127.0.0.1,::1 trusted
    r = http_request(p.port, headers=[*SPOOFED, ("Via", "1.0 fred")])
    assert r.status == 200
    seen = b.seen()[-1]
    assert seen.header("x-forwarded-for") == "1.2.3.4, 127.0.0.1"
    fwd = forwarded_elements(seen.header("forwarded") or "")
    assert [e.get("for") for e in fwd] == ["1.2.3.4", "127.0.0.1"], fwd
    assert fwd[-1].get("proto") == "http"
    assert (seen.header("via") or "").replace(" ", "") == "1.0fred,1.1prefork_lb"


@pytest.mark.parametrize("allow", ["", "127.0.0.1"])
def test_connection_header_cannot_strip_forwarding_headers(start_proxy, backends, allow: str) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--forwarded-allow-ips", allow)
    names_ = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded")

    def forwarding(headers: list[tuple[str, str]]) -> dict[str, str | None]:
        assert http_request(p.port, headers=headers).status == 200
        seen = b.seen()[-1]
        return {n: seen.header(n) for n in names_}

    plain = forwarding(SPOOFED)
    named = forwarding(
        [("Connection", "X-Forwarded-For, Forwarded, X-Forwarded-Proto, X-Forwarded-Host"), *SPOOFED]
    )
    assert named == plain, (named, plain)
    assert (plain["x-forwarded-for"] or "").split(",")[-1].strip() == "127.0.0.1", plain
    if allow:  # trusted: the client's chain is kept, ours appended
        assert plain["x-forwarded-for"] == "1.2.3.4, 127.0.0.1", plain


def test_hop_by_hop_headers_do_not_reach_the_backend(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    hdrs = [
        ("Connection", "keep-alive, X-Private, x-other"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("X-Private", "secret"),
        ("X-Other", "1"),
        ("Proxy-Connection", "keep-alive"),
        ("Trailer", "X-T"),
        ("X-End-To-End", "kept"),
    ]
    assert http_request(p.port, headers=hdrs).status == 200
    seen = b.seen()[-1]
    for name in (
        "keep-alive",
        "te",
        "x-private",
        "x-other",
        "proxy-connection",
        "trailer",
        "transfer-encoding",
    ):
        assert not seen.has(name), (name, seen.headers)
    assert (seen.header("connection") or "keep-alive").lower() in ("keep-alive", "close"), seen.headers
    assert seen.header("x-end-to-end") == "kept"


def test_hop_by_hop_headers_of_the_response_do_not_reach_the_client(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    r = http_request(p.port, "GET", "/hop")
    assert r.status == 200 and r.body == b"b0"
    for name in ("keep-alive", "x-private", "upgrade"):
        assert r.header(name) is None, (name, r.headers)
    assert r.header("x-backend-name") == "b0"


def test_lb_headers_false(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0", "--lb-headers", "false")
    r = http_request(p.port)
    assert r.status == 200 and r.header("x-backend-server") is None, r
    seen = b.seen()[-1]
    assert not seen.has("x-forwarded-by")
    assert seen.header("x-forwarded-for") == "127.0.0.1"


def test_client_x_forwarded_by_does_not_pass_when_lb_headers_are_on(start_proxy, backends) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    assert http_request(p.port, headers=[("X-Forwarded-By", "mallory")]).status == 200
    assert b.seen()[-1].header_list("x-forwarded-by") == ["prefork_lb"]


def test_ipv6_backend_and_client(start_proxy, backends) -> None:
    b = backends(1, host="::1")[0]
    port6 = free_port_v6()
    start_proxy([b], "--health-check-interval", "0", "-b", f"[::1]:{port6}")
    with socket.create_connection(("::1", port6), timeout=5) as sock:
        sock.sendall(build_request(host="[::1]"))
        r = HTTPStream(sock).read_response()
    assert r.status == 200 and r.header("x-backend-server") == f"[::1]:{b.port}", r
    seen = b.seen()[-1]
    assert seen.header("x-forwarded-for") == "::1"
    assert forwarded_elements(seen.header("forwarded") or "")[-1] == {
        "for": "[::1]",
        "proto": "http",
        "host": "[::1]",
    }
    assert '"' in (seen.header("forwarded") or ""), "for=[::1] must be a quoted-string (RFC 7239 section 6)"
