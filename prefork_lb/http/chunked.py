"""Following a chunked request body in its raw bytes (RFC 9112 section 7.1); pure, no I/O.

llhttp decodes chunked bodies, but two things it leaves to us:

* it accepts a chunk extension with an empty value (``20;name=``), which RFC 9112 section
  7.1.1 does not (``chunk-ext-val = token / quoted-string``), and httptools passes no chunk
  extension to Python at all;
* httptools has llhttp skip the body of every Upgrade or CONNECT request, so the body of one
  that has a body is ours to decode, up to where the next protocol's bytes begin.

:class:`ChunkedScanner` walks the framing of one chunked body, fed piece by piece: chunk-size
lines (checked, extensions included, by :func:`valid_chunk_extensions`), chunk data (skipped,
or handed to a sink), the CRLF after each chunk, the last chunk and the trailer section (each
trailer line must look like a field, and none may carry framing, routing or authentication).
It returns where the body ended. Invariants: it keeps at most one unfinished line
(:data:`LINE_MAX`); it never copies chunk data it only skips; a malformed body raises
:class:`~prefork_lb.http.errors.BadRequest` and the scanner is not to be fed again.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from prefork_lb.http.errors import BadRequest

__all__ = ["LINE_MAX", "ChunkedScanner", "valid_chunk_extensions"]

LINE_MAX = 65536  # the longest chunk-size or trailer line we keep while it arrives

# *( ";" chunk-ext-name [ "=" chunk-ext-val ] ), with a value that is a token or a whole
# quoted-string, never empty; llhttp has refused whitespace around ";" and "=" already.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_EXTENSIONS = re.compile(rb"(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb'|"(?:[^"\\\r\n]|\\.)*"))?)*')
_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_FIELD_NAME = re.compile(_TOKEN)


def valid_chunk_extensions(ext: bytes) -> bool:
    """True if ``ext`` (what follows the chunk size on its line, CRLF excluded) is a valid
    list of chunk extensions, empty included."""
    return _EXTENSIONS.fullmatch(ext) is not None


def _check_size_line(line: bytes) -> int:
    """The chunk size of a chunk-size line (CRLF excluded), extensions checked."""
    semi = line.find(b";")
    size = line if semi == -1 else line[:semi]
    if _SIZE.fullmatch(size) is None:
        raise BadRequest("invalid chunk size")
    if semi != -1 and not valid_chunk_extensions(line[semi:]):
        raise BadRequest("invalid chunk extension")
    return int(size, 16)


# The states of a scanner: what the next bytes are.
_SIZE_LINE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)


class ChunkedScanner:
    """One chunked body, fed piece by piece (see the module docstring)."""

    __slots__ = ("state", "left", "line", "forbidden")

    def __init__(self, forbidden_trailers: frozenset[str] = frozenset()) -> None:
        self.state = _SIZE_LINE
        self.left = 0  # chunk data still to come, in _DATA
        self.line = b""  # the start of a line that has not ended yet
        self.forbidden = forbidden_trailers  # lower-case field names refused in a trailer

    @property
    def done(self) -> bool:
        return self.state == _DONE

    def scan(self, data: bytes, pos: int = 0, sink: Callable[[bytes], None] | None = None) -> int:
        """Follow the body through ``data[pos:]``; chunk data goes to ``sink`` if given.
        Returns the offset in ``data`` just past the body's end, or -1 if the body goes on."""
        n = len(data)
        while pos < n:
            state = self.state
            if state == _DATA:
                step = min(self.left, n - pos)
                if sink is not None:
                    sink(data[pos : pos + step])
                self.left -= step
                pos += step
                if not self.left:
                    self.state = _DATA_END
                continue
            if state == _DONE:
                return pos
            end = data.find(b"\n", pos)
            if end == -1:
                self.line += data[pos:]
                if len(self.line) > LINE_MAX:
                    raise BadRequest("chunk line too long")
                return -1
            line = self.line + data[pos:end] if self.line else data[pos:end]
            self.line = b""
            pos = end + 1
            if line[-1:] != b"\r":
                raise BadRequest("bare LF in a chunked body")
            self._line(line[:-1])
        return pos if self.state == _DONE else -1

    def _line(self, line: bytes) -> None:
        state = self.state
        if state == _SIZE_LINE:
            size = _check_size_line(line)
            if size:
                self.left = size
                self.state = _DATA
            else:
                self.state = _TRAILERS
        elif state == _DATA_END:
            if line:
                raise BadRequest("chunk data longer than its size")
            self.state = _SIZE_LINE
        elif not line:  # _TRAILERS: the empty line ends the body
            self.state = _DONE
        else:
            name, colon, _ = line.partition(b":")
            if not colon or _FIELD_NAME.fullmatch(name) is None:
                raise BadRequest("invalid trailer field")
            if name.decode("ascii").lower() in self.forbidden:
                raise BadRequest(f"{name.decode('ascii').lower()} is not allowed in a trailer")
