"""Errors a client can cause.

Each HTTPError carries the status it is answered with; the connection is closed.
ClientDisconnected is not answered at all: the client is gone.
"""

from __future__ import annotations


class HTTPError(Exception):
    status = 400
    reason = "Bad Request"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.reason)
        self.detail = detail or self.reason


class BadRequest(HTTPError):
    status, reason = 400, "Bad Request"


class RequestTimeout(HTTPError):
    status, reason = 408, "Request Timeout"


class PayloadTooLarge(HTTPError):
    status, reason = 413, "Content Too Large"


class URITooLong(HTTPError):
    status, reason = 414, "URI Too Long"


class ExpectationFailed(HTTPError):
    status, reason = 417, "Expectation Failed"


class HeaderFieldsTooLarge(HTTPError):
    status, reason = 431, "Request Header Fields Too Large"


class NotImplementedCoding(HTTPError):
    status, reason = 501, "Not Implemented"


class ServiceUnavailable(HTTPError):
    status, reason = 503, "Service Unavailable"


class AppEventError(RuntimeError):
    """An ASGI app sent an event it may not send now (or a malformed one).

    Here, not in prefork_lb.asgi.events, because a class that subclasses a built-in exception
    cannot be compiled by mypyc (prefork_lb/compiled.py) and this module is not."""


class ClientDisconnected(OSError):
    """The client went away (EOF, reset or read timeout) while the server needed it.

    Raised by the WSGI worker's ``wsgi.input`` when the request body ends early, and by the
    ASGI worker's ``send()`` after the client has gone: the ASGI spec asks for a
    server-specific subclass of OSError.
    """
