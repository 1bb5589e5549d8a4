"""PEP 3333 pieces: the streaming ``wsgi.input``, ``wsgi.file_wrapper`` and environ keys.

``Input`` never holds more than what the app asked for plus one socket read: it pulls bytes
from the connection only when the app reads, so a 1 GB upload streams through.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefork_lb.http.parser import Request


class BodySource:
    """What Input pulls from: the connection implements ``pull(request)``."""

    def pull(self, req: Request) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class Input:
    """wsgi.input: read, readline, readlines and iteration over the request body."""

    __slots__ = ("_src", "_req", "_buf")

    def __init__(self, src: BodySource, req: Request) -> None:
        self._src = src
        self._req = req
        self._buf = bytearray()

    def _fill(self) -> bool:
        """Add body bytes to the buffer, reading the socket if none wait. False at the end."""
        req = self._req
        while not req.chunks:
            if req.complete:
                return False
            self._src.pull(req)
        chunks = req.chunks
        if len(chunks) == 1:
            self._buf += chunks[0]
        else:
            self._buf += b"".join(chunks)
        chunks.clear()
        return True

    def read(self, size: int | None = -1) -> bytes:
        buf = self._buf
        if size is None or size < 0:
            while self._fill():
                pass
            data = bytes(buf)
            buf.clear()
            return data
        while len(buf) < size and self._fill():
            pass
        data = bytes(buf[:size])
        del buf[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        if size is None:
            size = -1
        buf = self._buf
        start = 0
        while True:
            i = buf.find(b"\n", start)
            if i != -1:
                end = i + 1
                break
            start = len(buf)
            if 0 <= size <= len(buf):
                end = size
                break
            if not self._fill():
                end = len(buf)
                break
        if 0 <= size < end:
            end = size
        data = bytes(buf[:end])
        del buf[:end]
        return data

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                break
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def drain(self) -> None:
        """Throw away what the app left unread (the caller bounds how much)."""
        self._buf.clear()
        self._req.chunks.clear()
        self._req.discard = True


def _empty_input() -> Input:
    from prefork_lb.http.parser import Request

    req = Request()
    req.complete = True
    return Input(BodySource(), req)


# One shared, stateless wsgi.input for requests that have no body (most GETs): it reads as
# empty and never pulls, so no per-request object is needed.
EMPTY_INPUT = _empty_input()


class FileWrapper:
    """wsgi.file_wrapper: served with os.sendfile when the file is a regular file."""

    def __init__(self, filelike: IO[bytes], blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data


# Header name (lower-cased) -> environ key; "" for names with '_' (dropped, as gunicorn does,
# since HTTP_X_A would not tell 'X-A' from 'X_A' and an attacker could spoof a proxy header).
ENV_KEYS: dict[str, str] = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


def environ_key(lname: str) -> str:
    key = ENV_KEYS.get(lname)
    if key is None:
        key = "" if "_" in lname else "HTTP_" + lname.upper().replace("-", "_")
        if len(ENV_KEYS) < 1024:
            ENV_KEYS[lname] = key
    return key


def base_environ(
    server_name: str,
    server_port: str,
    remote_addr: str,
    remote_port: str,
    script_name: str,
    url_scheme: str,
    errors: Any,
) -> dict[str, Any]:
    """The keys that stay the same for every request on one connection."""
    return {
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "REMOTE_ADDR": remote_addr,
        "REMOTE_PORT": remote_port,
        "SCRIPT_NAME": script_name,
        "SERVER_SOFTWARE": "prefork_lb",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": url_scheme,
        "wsgi.errors": errors,
        "wsgi.multithread": True,  # greenlets interleave like threads
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        "wsgi.input_terminated": True,
    }
