"""prefork_lb.asgi.ws_events: the app's send sequence, each event's fields, close codes."""

from __future__ import annotations

import pytest

from prefork_lb.asgi.ws_events import (
    CLOSED,
    OPEN,
    RESPONDING,
    Accept,
    AppEventError,
    AppSide,
    Close,
    Deny,
    DenyBody,
    Send,
    close_code,
    disconnect,
)


def opened() -> AppSide:
    side = AppSide(["chat"])
    side.step({"type": "websocket.accept"})
    return side


def test_accept_then_send_then_close():
    side = AppSide(["chat", "v2"])
    assert side.step(
        {"type": "websocket.accept", "subprotocol": "v2", "headers": [[b"x-a", b"1"]]}
    ) == Accept("v2", [(b"x-a", b"1")])
    assert side.state == OPEN
    assert side.step({"type": "websocket.send", "text": "hi"}) == Send("hi")
    assert side.step({"type": "websocket.send", "bytes": bytearray(b"\x00")}) == Send(b"\x00")
    assert side.step({"type": "websocket.send", "bytes": None, "text": "t"}) == Send("t")
    assert side.step({"type": "websocket.close", "code": 4000, "reason": "bye"}) == Close(4000, "bye", False)
    assert side.state == CLOSED


def test_close_defaults():
    assert opened().step({"type": "websocket.close"}) == Close(1000, "", False)
    assert opened().step({"type": "websocket.close", "code": None, "reason": None}) == Close(1000, "", False)


def test_close_before_accept_refuses():
    side = AppSide([])
    assert side.step({"type": "websocket.close", "code": 1000}) == Close(1000, "", True)
    assert side.state == CLOSED


def test_denial_response():
    side = AppSide([])
    assert side.step(
        {"type": "websocket.http.response.start", "status": 401, "headers": [(b"a", b"b")]}
    ) == Deny(401, [(b"a", b"b")])
    assert side.state == RESPONDING
    assert side.step({"type": "websocket.http.response.body", "body": b"x", "more_body": True}) == DenyBody(
        b"x", True
    )
    assert side.step({"type": "websocket.http.response.body"}) == DenyBody(b"", False)
    assert side.state == CLOSED


@pytest.mark.parametrize(
    ("events", "error"),
    [
        ([["not", "a", "dict"]], "an event must be a dict, not list"),
        (
            [{"type": "websocket.send", "text": "x"}],
            "'websocket.send': expected websocket.accept, websocket.close",
        ),
        (
            [{"type": "websocket.accept", "subprotocol": "nope"}],
            "'websocket.accept': subprotocol 'nope' was not offered",
        ),
        ([{"type": "websocket.accept", "subprotocol": 1}], "subprotocol must be a str, not int"),
        ([{"type": "websocket.accept", "headers": 5}], "headers must be an iterable"),
        ([{"type": "websocket.accept", "headers": [(b"a", b"b", b"c")]}], "invalid header"),
        ([{"type": "websocket.accept", "headers": [(b"a", b"b\r\n")]}], "invalid header"),
        (
            [{"type": "websocket.accept"}, {"type": "websocket.accept"}],
            "expected websocket.send or websocket.close after accept",
        ),
        (
            [{"type": "websocket.accept"}, {"type": "websocket.send"}],
            "'websocket.send': needs exactly one of bytes and text",
        ),
        (
            [{"type": "websocket.accept"}, {"type": "websocket.send", "bytes": b"", "text": ""}],
            "needs exactly one",
        ),
        (
            [{"type": "websocket.accept"}, {"type": "websocket.send", "bytes": "s"}],
            "bytes must be bytes, not str",
        ),
        (
            [{"type": "websocket.accept"}, {"type": "websocket.send", "text": b"s"}],
            "text must be a str, not bytes",
        ),
        (
            [{"type": "websocket.accept"}, {"type": "websocket.close", "code": 1005}],
            "code 1005 may not be sent",
        ),
        (
            [{"type": "websocket.accept"}, {"type": "websocket.close", "code": "1000"}],
            "code must be an int, not str",
        ),
        (
            [{"type": "websocket.accept"}, {"type": "websocket.close", "reason": 5}],
            "reason must be a str, not int",
        ),
        (
            [{"type": "websocket.accept"}, {"type": "websocket.close", "reason": "é" * 62}],
            "124 bytes of UTF-8, more than 123",
        ),
        (
            [
                {"type": "websocket.accept"},
                {"type": "websocket.close"},
                {"type": "websocket.send", "text": "x"},
            ],
            "already closed",
        ),
        ([{"type": "websocket.http.response.start", "status": "200"}], "status must be an int"),
        ([{"type": "websocket.http.response.start", "status": True}], "status must be an int"),
        (
            [{"type": "websocket.http.response.start", "status": 1000}],
            "status must be an int from 100 to 999",
        ),
        ([{"type": "websocket.http.response.start", "status": 101}], "status 101 cannot deny"),
        ([{"type": "websocket.http.response.start", "status": 150}], "status 150 cannot deny"),
        (
            [
                {"type": "websocket.http.response.start", "status": 400},
                {"type": "websocket.send", "text": "x"},
            ],
            "expected websocket.http.response.body",
        ),
        (
            [
                {"type": "websocket.http.response.start", "status": 400},
                {"type": "websocket.http.response.body", "body": "x"},
            ],
            "body must be bytes, not str",
        ),
        ([{"type": None}], "None: expected"),
    ],
)
def test_invalid_events(events, error):
    side = AppSide(["chat"])
    for event in events[:-1]:
        side.step(event)
    with pytest.raises(AppEventError) as info:
        side.step(events[-1])
    assert error in str(info.value)


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999])
def test_sendable_codes(code):
    assert close_code(code) == code


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, True, 1000.0])
def test_unsendable_codes(code):
    with pytest.raises(AppEventError):
        close_code(code)


def test_reason_at_the_limit_passes():
    assert opened().step({"type": "websocket.close", "reason": "x" * 123}) == Close(1000, "x" * 123, False)


def test_disconnect_event():
    assert disconnect(1006) == {"type": "websocket.disconnect", "code": 1006, "reason": ""}


def test_message_frame_is_the_frame_wsproto_writes() -> None:
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import BytesMessage, TextMessage

    from prefork_lb.asgi.ws_events import message_frame

    conn = Connection(ConnectionType.SERVER)
    for data in [
        "",
        "h\u00e9",
        "x" * 125,
        "x" * 126,
        "y" * 65535,
        "z" * 65536,
        b"",
        b"\x00" * 200,
        b"a" * 70000,
    ]:
        event = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        assert message_frame(data) == bytes(conn.send(event))
