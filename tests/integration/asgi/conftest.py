"""Fixtures that run AsgiServer in processes of their own (tests/asgi_server.py).

``asgi_shared(app, **options)``: one server per (app, options) for the session, for tests that
only send requests; ``asgi_start(app, env=None, **options)``: a fresh one owned by one test.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.asgi_server import AsgiProcess

Start = Callable[..., AsgiProcess]


@pytest.fixture(scope="session")
def asgi_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Start]:
    servers: dict[tuple[str, str], AsgiProcess] = {}

    def get(app: str, **options: Any) -> AsgiProcess:
        key = (app, json.dumps(options, sort_keys=True))
        srv = servers.get(key)
        if srv is None:
            srv = servers[key] = AsgiProcess(app, options, tmp_path_factory.mktemp("asgi"))
            srv.start()
        assert srv.alive, f"shared ASGI server {key} died:\n{srv.log_text()}"
        return srv

    try:
        yield get
    finally:
        for srv in servers.values():
            srv.stop()


@pytest.fixture
def asgi_start(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Start]:
    started: list[AsgiProcess] = []

    def start(app: str, env: dict[str, str] | None = None, **options: Any) -> AsgiProcess:
        srv = AsgiProcess(app, options, tmp_path_factory.mktemp("asgi"), env=env)
        started.append(srv)
        return srv.start()

    try:
        yield start
    finally:
        for srv in started:
            srv.stop()
