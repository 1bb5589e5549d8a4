"""Fixtures that run AsgiServer in processes of their own (tests/asgi_server.py).

``asgi_shared(app, **options)``: one server per (app, options) for the session, for tests that
only send requests; ``asgi_start(app, env=None, **options)``: a fresh one owned by one test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.asgi_server import AsgiProcess
from tests.helpers import owned_processes, shared_processes

Start = Callable[..., AsgiProcess]


@pytest.fixture(scope="session")
def asgi_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Start]:
    def make(app: str, **options: Any) -> AsgiProcess:
        return AsgiProcess(app, options, tmp_path_factory.mktemp("asgi"))

    yield from shared_processes(make)


@pytest.fixture
def asgi_start(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Start]:
    def make(app: str, env: dict[str, str] | None = None, **options: Any) -> AsgiProcess:
        return AsgiProcess(app, options, tmp_path_factory.mktemp("asgi"), env=env)

    yield from owned_processes(make)
