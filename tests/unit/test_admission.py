"""prefork_lb.admission: when a worker is full, and how a refused connection is answered (the
503 after the client's first bytes, then a half-close, then EOF or a deadline)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from prefork_lb.admission import FIRST_BYTES_WAIT, LINGER, Shedder, busy_response, limit, room


@pytest.mark.parametrize(
    ("max_concurrency", "queue_size", "expected"), [(0, 100, 0), (1, 1, 2), (4, 0, 4), (3, -1, 3)]
)
def test_limit_is_places_plus_queue_and_zero_without_a_limit(max_concurrency, queue_size, expected) -> None:
    assert limit(max_concurrency, queue_size) == expected


def test_room_is_what_is_left_under_the_limit() -> None:
    assert room(1, 1, 0) == 2 and room(1, 1, 1) == 1
    assert room(1, 1, 2) == 0 and room(1, 1, 5) == -3  # full: the next one is refused
    assert room(0, 100, 10_000) > 10_000  # no limit


def test_the_busy_response_is_a_closing_503_with_retry_after() -> None:
    data = busy_response()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 1" in head and b"\r\nConnection: close" in head
    assert body == b"server busy, try again\n" and f"Content-Length: {len(body)}".encode() in head


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, client = socket.socketpair()
    client.settimeout(2)
    yield ours, client
    ours.close()
    client.close()


class Watched:
    def __init__(self) -> None:
        self.fds: set[int] = set()

    def shedder(self) -> Shedder:
        return Shedder(self.fds.add, self.fds.remove)


def test_a_refused_connection_is_answered_once_it_speaks_then_closed_at_its_eof(pair) -> None:
    ours, client = pair
    w = Watched()
    shedder = w.shedder()
    shedder.refuse(ours, now=0.0)
    fd = ours.fileno()
    assert w.fds == {fd} and len(shedder) == 1 and shedder.refused == 1
    client.settimeout(0.05)
    with pytest.raises(TimeoutError):
        client.recv(100)  # nothing before the client spoke
    client.settimeout(2)
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert shedder.readable(fd, now=0.1)
    answer = b""
    while chunk := client.recv(4096):  # the half-close ends it
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 503") and b"\r\nRetry-After: 1\r\n" in answer
    assert answer.endswith(b"\r\n\r\nserver busy, try again\n")
    client.sendall(b"more")  # read and dropped, never a reset
    assert shedder.readable(fd, now=0.2) and len(shedder) == 1
    client.shutdown(socket.SHUT_WR)
    assert shedder.readable(fd, now=0.3)
    assert len(shedder) == 0 and w.fds == set() and ours.fileno() == -1


def test_a_request_already_there_is_answered_at_once(pair) -> None:
    ours, client = pair
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    Watched().shedder().refuse(ours, now=0.0)
    assert client.recv(4096).startswith(b"HTTP/1.1 503")


def test_deadlines_close_a_silent_client_and_end_the_linger(pair) -> None:
    ours, client = pair
    w = Watched()
    shedder = w.shedder()
    shedder.refuse(ours, now=0.0)
    shedder.expire(now=FIRST_BYTES_WAIT - 0.01)
    assert len(shedder) == 1
    shedder.expire(now=FIRST_BYTES_WAIT)
    assert len(shedder) == 0 and w.fds == set()
    assert client.recv(100) == b""  # closed unanswered: it never asked anything

    ours2, client2 = socket.socketpair()
    with ours2, client2:
        shedder.refuse(ours2, now=10.0)
        client2.sendall(b"GET / HTTP/1.1\r\n\r\n")
        shedder.readable(ours2.fileno(), now=10.0)
        shedder.expire(now=10.0 + LINGER - 0.01)
        assert len(shedder) == 1
        shedder.expire(now=10.0 + LINGER)
        assert len(shedder) == 0


def test_readable_ignores_descriptors_that_are_not_its_own() -> None:
    assert not Watched().shedder().readable(12345, now=0.0)
