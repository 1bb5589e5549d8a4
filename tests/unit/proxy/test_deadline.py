"""prefork_lb.proxy.deadline and the proxy's awaits on Python 3.10, where ``asyncio.timeout``
does not exist: here it is taken away (monkeypatch) and the proxy's connect and health check
must still work, and still time out with the builtin TimeoutError. Also: setup.cfg declares
the versions it supports, as classifiers that agree with python_requires."""

from __future__ import annotations

import asyncio
import configparser
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from prefork_lb.balance import make
from prefork_lb.config import defaults
from prefork_lb.proxy.backend import Backend
from prefork_lb.proxy.deadline import within
from prefork_lb.proxy.process import ProxyProcess
from prefork_lb.proxy.state import ProxyState

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(params=["3.11+", "3.10"])
def python(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: with asyncio.timeout, and without it as on Python 3.10."""
    if request.param == "3.10":
        monkeypatch.delattr(asyncio, "timeout", raising=False)
    return str(request.param)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def test_within_gives_the_result(python: str, loop: asyncio.AbstractEventLoop) -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert loop.run_until_complete(within(1.0, answer())) == 42
    assert loop.run_until_complete(within(None, answer())) == 42


def test_within_raises_the_builtin_timeout_error(python: str, loop: asyncio.AbstractEventLoop) -> None:
    cancelled = []

    async def never() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with pytest.raises(TimeoutError):
        loop.run_until_complete(within(0.01, never()))
    assert cancelled == [True]


class Recorder:
    """Stands in for the exchange that waits for a connect (the Connecting protocol)."""

    def __init__(self) -> None:
        self.got: list[tuple[Any, BaseException | None]] = []

    def connected(self, backend: Backend, up: Any, exc: BaseException | None) -> None:
        self.got.append((up, exc))
        if up is not None:
            up.transport.close()


def test_the_proxy_connects_to_a_backend(python: str, loop: asyncio.AbstractEventLoop) -> None:
    async def run() -> Recorder:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        state = ProxyState(defaults(), make("round_robin"), loop)
        rec = Recorder()
        await state._connect(Backend("127.0.0.1", port), rec)
        server.close()
        return rec

    [(up, exc)] = loop.run_until_complete(run()).got
    assert exc is None and up is not None


def test_a_connect_past_its_deadline_is_a_timeout(python: str, loop: asyncio.AbstractEventLoop) -> None:
    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(30)

    state = ProxyState(defaults(), make("round_robin"), loop)
    state.connect_timeout = 0.01
    loop.create_connection = slow  # type: ignore[method-assign]
    rec = Recorder()
    loop.run_until_complete(state._connect(Backend("127.0.0.1", 9), rec))
    [(up, exc)] = rec.got
    assert up is None and isinstance(exc, TimeoutError)


def test_a_health_check_answers_and_times_out(python: str, loop: asyncio.AbstractEventLoop) -> None:
    handlers: list[asyncio.Task[Any]] = []

    async def healthy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    async def run() -> tuple[bool, bool]:
        good = await asyncio.start_server(healthy, "127.0.0.1", 0)
        cfg = SimpleNamespace(health_check_timeout=0.2, health_check_path="/health")
        owner: Any = SimpleNamespace(cfg=cfg)
        owner.ask = lambda b: ProxyProcess.ask(owner, b)
        # A listener that never accepts: the connect succeeds (the backlog), no answer comes.
        with socket.create_server(("127.0.0.1", 0)) as hung:
            try:
                ok = await ProxyProcess.probe(owner, Backend("127.0.0.1", good.sockets[0].getsockname()[1]))
                timed_out = await ProxyProcess.probe(owner, Backend("127.0.0.1", hung.getsockname()[1]))
            finally:
                good.close()
                await asyncio.gather(*handlers)
        return ok, timed_out

    assert loop.run_until_complete(run()) == (True, False)


def test_setup_cfg_lists_the_python_versions_it_supports() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    assert cfg["options"]["python_requires"].strip() == ">=3.10"
    classifiers = [c.strip() for c in cfg["metadata"]["classifiers"].strip().splitlines()]
    versions = [
        c.rsplit(":: ", 1)[1] for c in classifiers if c.startswith("Programming Language :: Python :: 3.")
    ]
    assert versions == ["3.10", "3.11", "3.12", "3.13"], classifiers
