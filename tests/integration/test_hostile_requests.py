"""Hostile and unusual requests (Host forms, framing, smuggling, Upgrade and CONNECT with bodies),
sent as raw bytes to the workers and through the proxy in front of them (``--dispatch proxy``)
alike: each case says the status the client must get and whether the app may be called.

The app is ``tests.apps:echo``: it reads the whole body, writes a line "METHOD RAW_URI" to the
server's calls file once it has (see tests/apps.py), and answers the request as JSON. Every case
has its own path, so "the app was called" is "that line is in the calls file".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from tests.server import ServerProcess, exchange, parse_responses

TARGETS = {
    "worker": (),
    "proxy": ("--dispatch", "proxy", "--stats-bind", "off"),
}


@dataclass(frozen=True)
class Case:
    raw: bytes
    status: int  # what the client gets, in both targets unless ``proxy_status`` says otherwise
    body: bytes | None = None  # the body the app must have read (status 200 only)
    proxy_status: int | None = None
    headers_absent: tuple[str, ...] = field(default=())  # environ keys the app must not see

    def expected(self, target: str) -> int:
        return self.proxy_status if target == "proxy" and self.proxy_status is not None else self.status


def get(path: str, *headers: str, method: str = "GET", version: str = "HTTP/1.1", body: bytes = b"") -> bytes:
    head = f"{method} {path} {version}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    return head.encode("latin-1") + body


UPGRADE = ("Connection: upgrade", "Upgrade: foo")
CHUNKED = "Transfer-Encoding: chunked"

CASES: dict[str, Case] = {
    # -- Host (RFC 9110 section 7.2, RFC 3986 section 3.2.2) --
    "host-empty": Case(get("/host-empty", "Host: "), 400),
    "host-path": Case(get("/host-path", "Host: example.com/x"), 400),
    "host-userinfo": Case(get("/host-userinfo", "Host: user@example.com"), 400),
    "host-list": Case(get("/host-list", "Host: a.example, b.example"), 400),
    "host-list-nospace": Case(get("/host-list-nospace", "Host: a.example,b.example"), 400),
    "host-space": Case(get("/host-space", "Host: a b"), 400),
    "host-bad-port": Case(get("/host-bad-port", "Host: a:8o"), 400),
    "host-port-range": Case(get("/host-port-range", "Host: a:70000"), 400),
    "host-bare-ipv6": Case(get("/host-bare-ipv6", "Host: ::1"), 400),
    "host-bad-ipv6": Case(get("/host-bad-ipv6", "Host: [::g]"), 400),
    "host-query": Case(get("/host-query", "Host: a?b=c"), 400),
    "host-two": Case(get("/host-two", "Host: a", "Host: b"), 400),
    "host-missing": Case(get("/host-missing"), 400),
    "host-name-port": Case(get("/host-name-port", "Host: example.com:8080"), 200),
    "host-ipv4": Case(get("/host-ipv4", "Host: 192.0.2.1"), 200),
    "host-ipv6": Case(get("/host-ipv6", "Host: [2001:db8::1]:443"), 200),
    "host-pct": Case(get("/host-pct", "Host: ex%41mple.com"), 200),
    "host-empty-port": Case(get("/host-empty-port", "Host: example.com:"), 200),
    "host-http10-none": Case(get("/host-http10-none", version="HTTP/1.0"), 200),
    # -- framing and smuggling (RFC 9112 sections 6 and 7) --
    "chunk-ext-empty": Case(
        get("/ext-empty", "Host: a", CHUNKED, method="POST", body=b"3;name=\r\nabc\r\n0\r\n\r\n"), 400
    ),
    "chunk-ext-empty-last": Case(
        get("/ext-last", "Host: a", CHUNKED, method="POST", body=b"3\r\nabc\r\n0;x=\r\n\r\n"), 400
    ),
    "chunk-ext-valid": Case(
        get("/ext-valid", "Host: a", CHUNKED, method="POST", body=b'3;a=b;q="x;y="\r\nabc\r\n0\r\n\r\n'),
        200,
        b"abc",
    ),
    "chunk-data-like-ext": Case(
        get("/ext-data", "Host: a", CHUNKED, method="POST", body=b"5\r\n1;a=\r\r\n0\r\n\r\n"), 200, b"1;a=\r"
    ),
    "cl-and-te": Case(
        get(
            "/cl-te",
            "Host: a",
            "Content-Length: 6",
            CHUNKED,
            method="POST",
            body=b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        ),
        400,
    ),
    "cl-twice-differ": Case(
        get("/cl-twice", "Host: a", "Content-Length: 1", "Content-Length: 2", method="POST", body=b"ab"), 400
    ),
    "te-chunked-twice": Case(
        get("/te-twice", "Host: a", "Transfer-Encoding: chunked, chunked", method="POST", body=b"0\r\n\r\n"),
        400,
    ),
    "te-http10": Case(
        get("/te-10", "Host: a", CHUNKED, method="POST", version="HTTP/1.0", body=b"0\r\n\r\n"), 400
    ),
    "chunk-size-overflow": Case(
        get("/chunk-big", "Host: a", CHUNKED, method="POST", body=b"FFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    "chunk-size-space": Case(
        get("/chunk-space", "Host: a", CHUNKED, method="POST", body=b"3 \r\nabc\r\n0\r\n\r\n"), 400
    ),
    "post-no-framing": Case(
        get("/post-bare", "Host: a", method="POST"), 200, b"", headers_absent=("CONTENT_LENGTH",)
    ),
    # -- Upgrade and CONNECT with a body, answered with an ordinary response --
    "upgrade-length": Case(
        get("/upgrade-cl", "Host: a", *UPGRADE, "Content-Length: 5", method="POST", body=b"hello"),
        200,
        b"hello",
    ),
    "upgrade-chunked": Case(
        get(
            "/upgrade-te",
            "Host: a",
            *UPGRADE,
            CHUNKED,
            method="POST",
            body=b"2\r\nhe\r\n3;x=y\r\nllo\r\n0\r\n\r\n",
        ),
        200,
        b"hello",
    ),
    "upgrade-chunked-bad-ext": Case(
        get("/upgrade-bad", "Host: a", *UPGRADE, CHUNKED, method="POST", body=b"2;x=\r\nhe\r\n0\r\n\r\n"), 400
    ),
    "upgrade-no-body": Case(get("/upgrade-none", "Host: a", *UPGRADE), 200, b""),
    # CONNECT is not proxied (405 by design); a worker serves it as an ordinary request.
    "connect-length": Case(
        get("a.example:443", "Host: a.example:443", "Content-Length: 5", method="CONNECT", body=b"hello"),
        200,
        b"hello",
        405,
    ),
}


@pytest.fixture(scope="module", params=sorted(TARGETS))
def target(request: pytest.FixtureRequest, shared_server) -> tuple[str, ServerProcess]:
    name: str = request.param
    return name, shared_server("tests.apps:echo", *TARGETS[name])


def path_of(raw: bytes) -> str:
    line = raw.split(b"\r\n", 1)[0].decode("latin-1")
    method, path, _ = line.split(" ")
    return f"{method} {path}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_request(target: tuple[str, ServerProcess], name: str) -> None:
    where, srv = target
    case = CASES[name]
    got = exchange(srv.port, case.raw, 10)
    responses, _ = parse_responses(got)
    assert responses, (where, got)
    status = case.expected(where)
    assert responses[0].status == status, (where, responses[0], bytes(got[:300]))
    called = path_of(case.raw) in srv.calls()
    if status != 200:
        assert not called, f"{where}: the app was called for {name}"
        return
    assert called, f"{where}: the app was not called for {name}"
    seen = json.loads(responses[0].body)
    if case.body is not None:
        assert seen["body"].encode("latin-1") == case.body, (where, seen)
    for key in case.headers_absent:
        assert key not in seen["headers"], (where, seen["headers"])
