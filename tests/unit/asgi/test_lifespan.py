"""prefork_lb.asgi.lifespan: startup, shutdown, failures and the three modes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from prefork_lb.asgi.lifespan import Lifespan, LifespanFailed, failure_line


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def lifespan_app(startup: str = "complete", shutdown: str = "complete", message: str = "") -> Any:
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan" and scope["asgi"]["version"] == "3.0"
        msg = await receive()
        events.append(msg["type"])
        scope["state"]["started"] = True
        extra = {"message": message} if message else {}
        await send({"type": f"lifespan.startup.{startup}", **extra})
        if startup == "failed":
            return
        msg = await receive()
        events.append(msg["type"])
        await send({"type": f"lifespan.shutdown.{shutdown}", **extra})

    app.events = events  # type: ignore[attr-defined]
    return app


def test_startup_and_shutdown_share_state() -> None:
    app = lifespan_app()
    ls = Lifespan(app, "on")

    async def go() -> None:
        await ls.startup()
        assert ls.state == {"started": True} and ls.supported
        await ls.shutdown()

    run(go())
    assert app.events == ["lifespan.startup", "lifespan.shutdown"]


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_startup_failed_carries_the_message(mode: str) -> None:
    ls = Lifespan(lifespan_app("failed", message="no database"), mode)
    with pytest.raises(LifespanFailed, match="^the app's lifespan startup failed: no database$"):
        run(ls.startup())
    ls = Lifespan(lifespan_app("failed"), mode)
    with pytest.raises(LifespanFailed, match=r"\(no message\)"):
        run(ls.startup())


def test_shutdown_failed_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    ls = Lifespan(lifespan_app(shutdown="failed", message="flush failed"))

    async def go() -> None:
        await ls.startup()
        await ls.shutdown()

    with caplog.at_level(logging.ERROR, "prefork_lb.error"):
        run(go())
    assert "the app's lifespan shutdown failed: flush failed" in caplog.text
    ls = Lifespan(lifespan_app(shutdown="failed"))
    run(go())


async def http_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http", "http only"


def test_auto_treats_an_app_raising_at_once_as_unsupported(caplog: pytest.LogCaptureFixture) -> None:
    ls = Lifespan(http_only, "auto")

    async def go() -> None:
        await ls.startup()
        await ls.shutdown()  # nothing to do

    with caplog.at_level(logging.INFO, "prefork_lb.error"):
        run(go())
    assert not ls.supported
    assert "does not support the ASGI lifespan protocol (it raised AssertionError)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_on_fails_for_an_app_raising_at_once() -> None:
    with pytest.raises(LifespanFailed, match="startup raised AssertionError: http only"):
        run(Lifespan(http_only, "on").startup())


def test_auto_fails_for_an_app_that_spoke_first() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        raise RuntimeError("after complete")

    async def app2(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "lifespan.bogus"})

    async def go(a: Any) -> Lifespan:
        ls = Lifespan(a, "auto")
        await ls.startup()
        await asyncio.sleep(0)
        return ls

    ls = run(go(app))
    assert ls.supported  # it raised after the startup completed: logged, serving goes on
    with pytest.raises(LifespanFailed, match="unexpected lifespan event 'lifespan.bogus'"):
        run(go(app2))


def test_an_app_raising_after_startup_logs_at_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        raise RuntimeError("shutdown broke")

    async def go() -> None:
        ls = Lifespan(app)
        await ls.startup()
        await ls.shutdown()

    with caplog.at_level(logging.ERROR, "prefork_lb.error"):
        run(go())
    assert "the app's lifespan shutdown raised RuntimeError: shutdown broke" in caplog.text


def test_an_app_returning_at_once_needs_no_shutdown() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    async def go() -> Lifespan:
        ls = Lifespan(app)
        await ls.startup()
        await ls.shutdown()
        return ls

    assert not run(go()).supported


def test_off_sends_nothing_and_bad_modes_are_refused() -> None:
    app = lifespan_app()
    ls = Lifespan(app, "off")

    async def go() -> None:
        await ls.startup()
        await ls.shutdown()

    run(go())
    assert app.events == [] and not ls.supported
    with pytest.raises(ValueError, match="lifespan mode must be one of auto, on, off, not 'yes'"):
        Lifespan(app, "yes")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("the app's lifespan startup failed: no database", "the app's lifespan startup failed: no database"),
        (
            # Starlette's message: the whole traceback; its last line names the problem
            "the app's lifespan startup failed: Traceback (most recent call last):\n"
            '  File "app.py", line 3, in lifespan\n    raise RuntimeError("no db")\n'
            "RuntimeError: no db\n",
            "the app's lifespan startup failed: RuntimeError: no db",
        ),
        ("first line\nsecond line", "first line"),
        ("", "the app's lifespan startup failed"),
        ("  \n ", "the app's lifespan startup failed"),
    ],
)
def test_failure_line_is_the_line_that_names_the_problem(text: str, line: str) -> None:
    assert failure_line(LifespanFailed(text)) == line


def test_a_startup_that_reports_its_failure_then_raises_logs_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Starlette sends lifespan.startup.failed, then re-raises: the failure is the message, not a
    second error with a traceback."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})
        raise RuntimeError("no database")

    with caplog.at_level(logging.DEBUG, "prefork_lb.error"):
        with pytest.raises(LifespanFailed, match="no database"):
            run(Lifespan(app, "auto").startup())
    assert "raised after startup" not in caplog.text and "Traceback" not in caplog.text
