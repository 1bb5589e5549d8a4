"""Errors a client can cause. Each carries the status it is answered with; the connection is closed."""

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
