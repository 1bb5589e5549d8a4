"""Fixtures that run real servers (see tests/server.py).

``shared_server(app, *flags)``: one server per (app, flags) for the whole session, for tests
that only send requests. ``start_server(app, *flags)``: a fresh server owned by one test (for
flags that change behaviour a test watches closely, its logs, or its process). Both stop every
server they started, whatever happens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.helpers import owned_processes, shared_processes
from tests.server import ServerProcess
from tests.stores import StoreProcess

StartServer = Callable[..., ServerProcess]


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    def make(app: str, *flags: str) -> ServerProcess:
        return ServerProcess(app, flags, workdir=tmp_path_factory.mktemp("server"))

    yield from shared_processes(make)


@pytest.fixture
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    def make(app: str, *flags: str, env: dict[str, str] | None = None) -> ServerProcess:
        return ServerProcess(app, flags, workdir=tmp_path_factory.mktemp("server"), env=env)

    yield from owned_processes(make)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    """A redis-server of its own on a free loopback port (skipped where it is not installed)."""
    store = StoreProcess("redis", tmp_path_factory.mktemp("redis"))
    try:
        yield store.start()
    finally:
        store.stop()


@pytest.fixture
def memcached_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    """A memcached of its own on a free loopback port (skipped where it is not installed)."""
    store = StoreProcess("memcached", tmp_path_factory.mktemp("memcached"))
    try:
        yield store.start()
    finally:
        store.stop()
