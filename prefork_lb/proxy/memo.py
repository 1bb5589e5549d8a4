"""The proxy's response memo: what a response head seen before turned into, so that the next
response with the same head bytes is relayed without parsing (see Upstream.data_received).

A leaf: it imports nothing of the package, so the upstream side, the exchange and the proxy's
shared state can all hold it. Invariants: the table is keyed on the raw head bytes (start line
and headers, without the blank line), which fully determine the rewrite; a key first maps to
``None`` (seen once) and gets its :class:`ResponseMemo` the second time it comes
(``prefork_lb.http.parser.seen_before``, which also bounds the table).
"""

from __future__ import annotations

from typing import TypeAlias

__all__ = ["ResponseMemo", "ResponseMemos"]


class ResponseMemo:
    """What a response head seen before turned into: status, length, whether the backend keeps
    the connection, and the rewritten head per (client version, keep-alive, backend).

    The Date header changes once a second, so a backend answering the same way hits the memo
    for all but one response a second. Only simple responses are remembered: a final status,
    Content-Length framing."""

    __slots__ = ("status", "length", "upstream_keep", "heads")

    def __init__(self, status: int, length: int, upstream_keep: bool) -> None:
        self.status = status
        self.length = length
        self.upstream_keep = upstream_keep
        self.heads: dict[tuple[str, bool, bytes], bytes] = {}


# raw head -> its memo, or None when it was seen once; one table per proxy process
ResponseMemos: TypeAlias = dict[bytes, ResponseMemo | None]
