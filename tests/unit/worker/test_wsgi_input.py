"""wsgi.input over a body that arrives in pieces: read, readline, readlines, iteration."""

from __future__ import annotations

import pytest

from prefork_lb.http.errors import ClientDisconnected
from prefork_lb.http.parser import Request
from prefork_lb.worker.wsgi import Input


class Source:
    """Delivers the body in the given pieces, one per pull, like a socket would."""

    def __init__(self, pieces: list[bytes], eof_early: bool = False) -> None:
        self.pieces = list(pieces)
        self.pulls = 0
        self.eof_early = eof_early

    def pull(self, req: Request) -> None:
        self.pulls += 1
        if not self.pieces:
            raise ClientDisconnected("eof")
        req.chunks.append(self.pieces.pop(0))
        if not self.pieces and not self.eof_early:
            req.complete = True


def make(pieces: list[bytes], **kw: bool) -> tuple[Input, Source]:
    src = Source(pieces, **kw)
    return Input(src, Request()), src


def test_read_all_and_then_empty() -> None:
    inp, _ = make([b"ab", b"cd\n", b"ef"])
    assert inp.read() == b"abcd\nef"
    assert inp.read() == b""
    assert inp.read(10) == b""


def test_read_sized_pulls_only_what_it_needs() -> None:
    inp, src = make([b"abc", b"def", b"ghi"])
    assert inp.read(2) == b"ab"
    assert src.pulls == 1
    assert inp.read(4) == b"cdef"
    assert src.pulls == 2
    assert inp.read(100) == b"ghi"


def test_readline_across_pieces_and_with_size() -> None:
    inp, _ = make([b"hel", b"lo\nwor", b"ld\nlast"])
    assert inp.readline() == b"hello\n"
    assert inp.readline(3) == b"wor"
    assert inp.readline() == b"ld\n"
    assert inp.readline() == b"last"
    assert inp.readline() == b""


def test_readlines_and_iteration() -> None:
    inp, _ = make([b"a\nb", b"\nc"])
    assert inp.readlines() == [b"a\n", b"b\n", b"c"]
    inp2, _ = make([b"x\ny\n"])
    assert list(inp2) == [b"x\n", b"y\n"]


def test_readlines_hint_stops_early() -> None:
    inp, _ = make([b"aa\nbb\ncc\n"])
    assert inp.readlines(2) == [b"aa\n"]


def test_body_already_complete_needs_no_pull() -> None:
    req = Request()
    req.chunks.append(b"xyz")
    req.complete = True
    src = Source([])
    assert Input(src, req).read() == b"xyz"
    assert src.pulls == 0


def test_client_disconnect_surfaces() -> None:
    inp, _ = make([b"abc"], eof_early=True)
    with pytest.raises(ClientDisconnected):
        inp.read()


def test_the_shared_empty_input_stays_empty() -> None:
    from prefork_lb.worker.wsgi import EMPTY_INPUT

    assert EMPTY_INPUT.read() == b"" and EMPTY_INPUT.read(10) == b""
    assert EMPTY_INPUT.readline() == b"" and EMPTY_INPUT.readlines() == [] and list(EMPTY_INPUT) == []
    EMPTY_INPUT.drain()
    assert EMPTY_INPUT.read() == b""
