"""One parsed request (:class:`Request`) and the memo of whole requests seen before
(:class:`RequestMemo`, with its rule :func:`seen_before`); no I/O.

The parser (``http.parser``) fills a :class:`Request` as llhttp reports its head and body; the
worker and the proxy read it. Invariant: a Request kept in a memo (``memo`` not None) is whole,
bodiless and keeps the connection open, and is never changed after it is kept, since the same
object is handed out again for the same bytes.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["MEMO_MAX", "Request", "RequestMemo", "seen_before"]

MEMO_MAX: Final = 256  # request (and response) heads a memo keeps before it starts over


class Request:
    """One request: its head, and its body as it arrives."""

    __slots__ = (
        "method",
        "target",
        "version",
        "headers",
        "keep_alive",
        "content_length",
        "chunked",
        "expect_continue",
        "upgrade",
        "chunks",
        "body_size",
        "complete",
        "discard",
        "host",
        "content_type",
        "memo",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.version = "HTTP/1.1"
        self.headers: list[tuple[str, bytes, bytes]] = []  # (lower name, raw name, value)
        self.keep_alive = True
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.upgrade = False
        self.chunks: list[bytes] = []
        self.body_size = 0
        self.complete = False
        self.discard = False  # the app is done with it: drop further body bytes
        self.host: bytes | None = None
        self.content_type: bytes | None = None
        # Set on a request kept in a parser memo: the callers' cache of what they derive from
        # it (the proxy's rewritten head, the worker's environ), since the same object comes back.
        self.memo: dict[object, Any] | None = None

    def split_target(self) -> tuple[bytes, bytes]:
        """(path, query) of the request-target, not percent-decoded; fragment dropped."""
        t = self.target
        if t[:1] != b"/":
            if t == b"*" or self.method == "CONNECT":
                return b"", b""
            # absolute-form: drop scheme://authority
            rest = t.split(b"://", 1)[1]
            cut = len(rest)
            for sep in (b"/", b"?", b"#"):
                i = rest.find(sep)
                if i != -1 and i < cut:
                    cut = i
            t = rest[cut:]
            if t[:1] != b"/":
                t = b"/" + t
        hash_at = t.find(b"#")
        if hash_at != -1:
            t = t[:hash_at]
        q = t.find(b"?")
        if q == -1:
            return t, b""
        return t[:q], t[q + 1 :]


class RequestMemo(dict[bytes, Request | None]):
    """Whole bodiless requests by their exact bytes: the Request once they came twice, None
    after the first time. Shared by the parsers of one process that have the same limits.
    While lookups keep finding nothing it rests, so heads that never repeat cost next to
    nothing."""

    __slots__ = ("misses", "rest")

    def __init__(self) -> None:
        super().__init__()
        self.misses = 0
        self.rest = 0


def seen_before(memos: dict[bytes, Any], key: bytes) -> bool:
    """The rule of the head memos (requests here, responses in the proxy): a head is kept the
    second time it comes. True: ``key`` came once before, and the caller stores its value now;
    False: only the bytes are noted. A memo full at MEMO_MAX starts over."""
    if len(memos) >= MEMO_MAX:
        memos.clear()
    if key in memos:
        return True
    memos[key] = None
    return False
