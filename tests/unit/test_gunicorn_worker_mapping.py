"""prefork_lb.gunicorn's pure parts: gunicorn's settings as our engines' options, max_requests,
and the ASGI worker's access-log hook in gunicorn's format (no process started)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("gunicorn")

from gunicorn.config import Config  # noqa: E402
from gunicorn.glogging import Logger  # noqa: E402

from prefork_lb.asgi.options import AsgiOptions  # noqa: E402
from prefork_lb.gunicorn import AsgiWorker, Worker, _AsgiHooks  # noqa: E402
from prefork_lb.worker.server import ServerOptions  # noqa: E402


def gunicorn_cfg(*args: str) -> Any:
    cfg = Config()
    parser = cfg.parser()
    for key, value in vars(parser.parse_args([*args, "app:app"])).items():
        if key != "args" and value is not None:
            cfg.set(key.lower(), value)
    return cfg


def make(cls: type, *args: str, max_requests: int = 0) -> Any:
    """A worker object without gunicorn's __init__ (which makes a tmp file and draws jitter)."""
    worker = cls.__new__(cls)
    worker.cfg = gunicorn_cfg(*args)
    worker.log = SimpleNamespace(info=lambda *a: worker.said.append(a[0] % a[1:]))
    worker.said = []
    worker.alive = True
    worker.max_requests = max_requests
    return worker


def test_both_engines_take_gunicorns_limits_keepalive_and_connections() -> None:
    args = ("--limit-request-line", "100", "--limit-request-fields", "7", "--limit-request-field_size", "900")
    args += ("--keep-alive", "20", "--worker-connections", "50")
    wsgi = ServerOptions(**make(Worker, *args).engine_options())
    asgi = make(
        AsgiWorker, *args, "--forwarded-allow-ips", "10.0.0.0/8", "--root-path", "/api/"
    ).asgi_options()
    assert isinstance(asgi, AsgiOptions)
    for opts in (wsgi, asgi):
        limits = opts.limits
        assert (limits.request_line, limits.request_fields, limits.request_field_size) == (100, 7, 900)
        assert not limits.require_host  # gunicorn does not require Host
        assert (opts.keepalive, opts.header_timeout, opts.worker_connections) == (20, 20.0, 50)
    assert asgi.root_path == "/api"
    assert asgi.trusted_peers is not None and "10.1.2.3" in asgi.trusted_peers
    assert "192.0.2.1" not in asgi.trusted_peers
    defaults = make(AsgiWorker).asgi_options()
    assert defaults.header_timeout == 10.0 and defaults.root_path == ""


def test_retire_due_at_max_requests_once_and_only_when_set() -> None:
    w = make(AsgiWorker, max_requests=3)
    assert not w.retire_due(2)
    assert w.retire_due(3) and w.said == ["Autorestarting worker after current request."]
    w.alive = False  # already stopping: not again
    assert not w.retire_due(4)
    assert not make(Worker, max_requests=0).retire_due(10**6)


class FakeServer:
    served = 0


def asgi_hooks(*args: str, max_requests: int = 0) -> tuple[Any, list[str], list[bool]]:
    worker = make(AsgiWorker, *args, max_requests=max_requests)
    worker.server = FakeServer()
    stops: list[bool] = []
    worker.stop = lambda graceful: stops.append(graceful)
    glog = Logger(worker.cfg)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    glog.access_log.handlers = [handler]
    worker.log = glog
    return _AsgiHooks(worker), lines, stops


SCOPE = {
    "type": "http",
    "method": "POST",
    "path": "/items",
    "raw_path": b"/items",
    "query_string": b"a=1",
    "http_version": "1.1",
    "scheme": "http",
    "client": ("192.0.2.7", 5000),
    "headers": [(b"user-agent", b"tester/1"), (b"x-test", b"abc")],
}


def test_access_line_in_gunicorns_format_and_atoms() -> None:
    fmt = "%(h)s %(r)s %(s)s %(b)s %(m)s %(U)s %(q)s %(a)s %({x-test}i)s %(H)s"
    hooks, lines, stops = asgi_hooks("--access-logfile", "-", "--access-logformat", fmt)
    hooks.request_finished(None, SCOPE, 201, 42, 0.01)
    hooks.request_finished(None, SCOPE, 0, 0, 0.01)  # no status line went out: no access line
    assert lines == [
        "192.0.2.7 POST /items?a=1 HTTP/1.1 201 42 POST /items a=1 tester/1 abc HTTP/1.1",
    ]
    assert stops == []


def test_no_access_log_without_accesslog_and_max_requests_stops_gracefully() -> None:
    hooks, lines, stops = asgi_hooks(max_requests=2)
    hooks.worker.server.served = 1
    hooks.request_finished(None, SCOPE, 200, 1, 0.0)
    assert stops == []
    hooks.worker.server.served = 2
    hooks.request_finished(None, SCOPE, 200, 1, 0.0)
    assert lines == [] and stops == [True]
