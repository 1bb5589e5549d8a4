"""The proxy's access-log lines: one per exchange, and one per answer from the cache (its
backend named ``cache``), in the workers' format and atoms (prefork_lb.logs.AccessLog)."""

from __future__ import annotations

from time import monotonic as _now
from types import SimpleNamespace
from typing import Any

from prefork_lb.http.parser import Request
from prefork_lb.logs import AccessLog
from prefork_lb.request_id import ENVIRON_KEY

CACHE = SimpleNamespace(key="cache")  # the backend of an answer from the cache, in the access log


def exchange_line(access: AccessLog, client: Any, ex: Any) -> None:
    """One access-log line per exchange, with the workers' atoms; ``%({x-backend-server}o)s``
    names the backend, ``%(s)s`` is what the client got (502/503/504 included). A JSON
    line has the backend as ``prefork_lb.backend`` and, when the response said it (a
    Content-Length), the body's size."""
    req = ex.req
    path, query = req.split_target()
    env: dict[str, Any] = {
        "REMOTE_ADDR": client.peer_ip,
        "REQUEST_METHOD": req.method,
        "RAW_URI": req.target.decode("latin-1"),
        "PATH_INFO": path.decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_PROTOCOL": req.version,
    }
    for lname, _, value in req.headers:
        env.setdefault("HTTP_" + lname.upper().replace("-", "_"), value.decode("latin-1"))
    backend = ex.backend.key if ex.backend is not None else "-"
    out_headers = [("X-Backend-Server", backend)]
    if ex.request_id is not None:
        env[ENVIRON_KEY] = ex.request_id.decode("latin-1")
    if access.json:
        env["wsgi.url_scheme"] = client.scheme
        line = SimpleNamespace(status=str(ex.status or "-"), bytes_sent=ex.length, out_headers=out_headers)
        access.log(env, line, _now() - ex.started, ex.backend.key if ex.backend is not None else None)
        return
    line = SimpleNamespace(status=str(ex.status or "-"), bytes_sent=ex.length or 0, out_headers=out_headers)
    access.log(env, line, _now() - ex.started)


def hit_line(
    access: AccessLog, client: Any, req: Request, answer: bytes, rid: bytes | None, started: float
) -> None:
    """The access-log line of an answer from the cache, as an exchange's (backend ``cache``)."""
    body = len(answer) - answer.find(b"\r\n\r\n") - 4
    hit = SimpleNamespace(req=req, backend=CACHE, request_id=rid, status=int(answer[9:12]), length=body)
    hit.started = started
    exchange_line(access, client, hit)
