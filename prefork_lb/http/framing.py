"""Response framing: how a response's body is delimited on the wire, and whether the connection
stays open after it. Pure: no I/O, no state; the worker and the proxy both ask here.

The rules (RFC 9112 section 6.3, as h11's ``_body_framing`` applies them):

* A response to HEAD, and any 1xx, 204 or 304 response, has no body (``NONE``), whatever its
  headers say. CONNECT gets no special case: neither server tunnels it (the worker serves it as
  an ordinary request and closes, the proxy refuses it), so its response is framed like a GET's.
* Otherwise a body the sender chunked is sent chunked, even when a Content-Length came with it
  (Transfer-Encoding wins); to an HTTP/1.0 client, which cannot read chunks, it is sent as-is and
  ended by closing (``CLOSE``).
* Otherwise a known length is sent with Content-Length (``LENGTH``).
* Otherwise the length is unknown: chunked to an HTTP/1.1 client, close-delimited to 1.0.
* The connection is kept only when the request allows it, the response side does not ask to
  close, and the body is not close-delimited.

Invariant: the results are the module's constants (compare with ``is`` or ``==``); the function
allocates nothing, since the worker calls it once per response.
"""

from __future__ import annotations

from typing import Final

NONE: Final = "none"  # no body bytes follow the head
LENGTH: Final = "length"  # Content-Length bytes follow
CHUNKED: Final = "chunked"  # chunked transfer coding, ended by the zero-length chunk
CLOSE: Final = "close"  # the body ends when the connection closes

# Every possible result, prebuilt: the per-response call returns one of these, no new tuple.
_NONE_KEEP: Final = (NONE, True)
_NONE_CLOSE: Final = (NONE, False)
_LENGTH_KEEP: Final = (LENGTH, True)
_LENGTH_CLOSE: Final = (LENGTH, False)
_CHUNKED_KEEP: Final = (CHUNKED, True)
_CHUNKED_CLOSE: Final = (CHUNKED, False)
_CLOSE: Final = (CLOSE, False)


def bodiless_status(code: int) -> bool:
    """True for a status whose response never has a body: 1xx, 204, 304."""
    return code < 200 or code == 204 or code == 304


def parse_content_length(value: str) -> int:
    """An app's Content-Length value as a number. Raises ValueError when it is not a
    non-negative integer (the same reading Python's ``int`` gives, as it always has been)."""
    try:
        length = int(value)
    except ValueError:
        raise ValueError(f"invalid Content-Length {value!r}") from None
    if length < 0:
        raise ValueError(f"invalid Content-Length {value!r}")
    return length


def response_framing(
    status: int,
    head: bool,
    version: str,
    length: int | None,
    chunked: bool,
    keep_alive: bool,
    close: bool,
) -> tuple[str, bool]:
    """(framing, keep) for a response: one of NONE/LENGTH/CHUNKED/CLOSE, and whether the
    connection stays open after it.

    ``status``: the response's status code; ``head``: the request was HEAD; ``version``: the
    request's HTTP version ("HTTP/1.1" or "HTTP/1.0"); ``length``: the response's Content-Length
    if it has a valid one; ``chunked``: the response arrives with Transfer-Encoding (a backend's);
    ``keep_alive``: the request allows keeping the connection (its version and Connection header,
    and anything else the caller knows about the request); ``close``: the response side wants the
    connection closed (the app's Connection: close, a draining server).
    """
    keep = keep_alive and not close
    if head or status < 200 or status == 204 or status == 304:
        return _NONE_KEEP if keep else _NONE_CLOSE
    if chunked or length is None:
        if version == "HTTP/1.1":
            return _CHUNKED_KEEP if keep else _CHUNKED_CLOSE
        return _CLOSE
    return _LENGTH_KEEP if keep else _LENGTH_CLOSE
