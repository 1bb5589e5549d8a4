"""prefork_lb.proxy.cache_plan: the revalidation head, what an unsafe method invalidates, and
the Cache-Status of forwarded responses (RFC 9111 4.3.1, 4.4; RFC 9211)."""

from __future__ import annotations

import pytest

from prefork_lb.proxy.cache_plan import Plan, conditional_head, forwarded_status, invalidated_keys

HEAD = (
    b'GET /a HTTP/1.1\r\nHost: h\r\nIf-None-Match: "c"\r\nIF-MODIFIED-SINCE: x\r\n'
    b"If-Match: *\r\nIf-Unmodified-Since: y\r\nIf-Range: z\r\nAccept: */*\r\n\r\n"
)


def test_the_clients_preconditions_are_replaced_by_the_stored_validators() -> None:
    stored = [("etag", b' "v1" '), ("last-modified", b"Mon, 01 Jan 2024 00:00:00 GMT")]
    assert conditional_head(HEAD, stored) == (
        b"GET /a HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n"
        b'if-none-match: "v1"\r\nif-modified-since: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n'
    )


def test_no_stored_validator_leaves_no_precondition() -> None:
    assert conditional_head(HEAD, []) == b"GET /a HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], [("http", "h", "/a?b")]),
        ([("location", b"/c")], [("http", "h", "/a?b"), ("http", "h", "/c")]),
        ([("location", b"d?e=1")], [("http", "h", "/a?b"), ("http", "h", "/d?e=1")]),
        ([("content-location", b"http://H/f")], [("http", "h", "/a?b"), ("http", "h", "/f")]),
        ([("location", b"http://h")], [("http", "h", "/a?b"), ("http", "h", "/")]),
        ([("location", b"/a?b")], [("http", "h", "/a?b")]),  # no duplicate
        ([("location", b"http://other/c")], [("http", "h", "/a?b")]),  # another host
        ([("location", b"https://h/c")], [("http", "h", "/a?b")]),  # another scheme
        ([("location", b"http://[::1/")], [("http", "h", "/a?b")]),  # not a URI
    ],
)
def test_what_an_unsafe_method_invalidates(headers, expected) -> None:  # type: ignore[no-untyped-def]
    assert invalidated_keys("HTTP", "H", "/a?b", headers) == expected


def test_forwarded_cache_status() -> None:
    plan = Plan(("http", "h", "/"), "uri-miss", [])
    assert forwarded_status(plan, 200) == b"prefork_lb; fwd=uri-miss"
    plan.stored = True
    assert forwarded_status(plan, 200) == b"prefork_lb; fwd=uri-miss; stored"
    stale = Plan(("http", "h", "/"), "stale", [], fwd_status=304)
    assert forwarded_status(stale, 200) == b"prefork_lb; fwd=stale; fwd-status=304"
    assert forwarded_status(stale, 304) == b"prefork_lb; fwd=stale"  # the same: left out
    err = Plan(None, "stale", [], fwd_status=503, detail="stale-if-error", collapsed=True)
    assert (
        forwarded_status(err, 200)
        == b'prefork_lb; fwd=stale; fwd-status=503; collapsed; detail="stale-if-error"'
    )
