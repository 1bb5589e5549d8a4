"""Request ids: the validator, the lookup among parsed headers, the generator, the setting."""

from __future__ import annotations

import pytest

from prefork_lb.request_id import MAX_LENGTH, RequestIds, environ_name, incoming_id, valid_request_id
from prefork_lb.settings.logs import header_name_or_off


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "abc-123",
        "f47ac10b-58cc-4372-a567-0e02b2c3d479",  # uuid4
        "Root=1-67891233-abcdef012345678912345678",  # AWS X-Amzn-Trace-Id
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # W3C traceparent
        "svc.a:b/c+d=e_f",
        "x" * MAX_LENGTH,
    ],
)
def test_valid_ids(value: str) -> None:
    assert valid_request_id(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "x" * (MAX_LENGTH + 1),
        "a b",
        'a"b',
        "a\\b",
        "a\nb",
        "a\n",  # fullmatch, not match: a trailing newline is no exception
        "a\r\nX-Injected: 1",
        "a\x00",
        "a,b",  # two headers merged by the server
        "a;b",
        "caf\xe9",  # a byte that is not ASCII (latin-1 decoded)
        "<script>",
    ],
)
def test_invalid_ids(value: str | None) -> None:
    assert not valid_request_id(value)


def test_environ_name() -> None:
    assert environ_name("X-Request-ID") == "HTTP_X_REQUEST_ID"
    assert environ_name("x-correlation-id") == "HTTP_X_CORRELATION_ID"


def _headers(*pairs: tuple[str, bytes]) -> list[tuple[str, bytes, bytes]]:
    return [(name.lower(), name.encode(), value) for name, value in pairs]


def test_incoming_id_found_by_lower_case_name() -> None:
    hs = _headers(("Host", b"a"), ("X-Request-Id", b"abc-1"), ("Accept", b"*/*"))
    assert incoming_id(hs, "x-request-id") == "abc-1"
    assert incoming_id(hs, "x-correlation-id") is None


@pytest.mark.parametrize("value", [b"", b"a b", b'a"b', b"\xff\xfe", b"x" * (MAX_LENGTH + 1)])
def test_incoming_id_invalid_is_none(value: bytes) -> None:
    assert incoming_id(_headers(("X-Request-ID", value)), "x-request-id") is None


def test_incoming_id_repeated_is_none() -> None:
    hs = _headers(("X-Request-ID", b"one"), ("X-Request-ID", b"two"))
    assert incoming_id(hs, "x-request-id") is None


def test_generated_ids_are_valid_unique_and_prefixed() -> None:
    gen = RequestIds()
    ids = [gen() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(valid_request_id(i) for i in ids)
    prefix = ids[0].split("-")[0]
    assert len(prefix) == 12 and all(i.startswith(prefix + "-") for i in ids)
    assert ids[:3] == [f"{prefix}-1", f"{prefix}-2", f"{prefix}-3"]
    assert ids[-1] == f"{prefix}-1000"


def test_generators_of_two_processes_differ() -> None:
    # Each process makes its own after the fork: 48 random bits tell them apart.
    assert RequestIds().prefix != RequestIds().prefix
    gen = RequestIds("cafe")
    assert gen() == "cafe-1" and gen.new() == "cafe-2"  # one counter behind both


@pytest.mark.parametrize(("value", "expected"), [("X-Request-ID", "X-Request-ID"), ("X-Trace", "X-Trace")])
def test_header_setting_accepts_names(value: str, expected: str) -> None:
    assert header_name_or_off(value) == expected


@pytest.mark.parametrize("value", ["off", "OFF", "", "none", None])
def test_header_setting_off(value: str | None) -> None:
    assert header_name_or_off(value) is None


@pytest.mark.parametrize("value", ["X Request", "X-Request-ID:", "X_Request_ID", "é", "x" * 101])
def test_header_setting_rejects_what_is_not_a_name(value: str) -> None:
    with pytest.raises(ValueError, match="not a header name"):
        header_name_or_off(value)
