"""Fixtures of the proxy's integration tests: the proxies and backends a test starts.

The L7 proxy over real sockets and real processes, against the contract in docs. Standalone:
``python -m prefork_lb proxy --backends ...`` in its own process group, in front of the backends
of tests/integration/proxy/backends.py (in-process threads that record what reached them, or
subprocesses where a test kills one with SIGKILL). Integrated: ``python -m prefork_lb APP
--dispatch proxy`` with real workers (test_integrated.py).

What is checked is what a user sees: status codes, bodies, headers at the client and at the
backend, /lb-health and /lb-stats, and the process list. Every wait polls with a deadline;
every process is stopped (TERM, then KILL of its group) whatever happens. Health checks run
every 0.2 s where a test watches them (FAST_HEALTH) and are off (interval 0) elsewhere, so
that only the test's own requests reach the recording backends. About 80 s on 2 cores:
``python -m pytest tests/integration/proxy -q``.

* ``start_proxy(backends, *flags, admin=True, app=None, env=None)``: a :class:`ProxyProcess`
  (standalone ``proxy`` or an app with ``--dispatch proxy``), stopped after the test.
* ``backends(n, **kw)``: ``n`` recording :class:`Backend` threads, stopped after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from tests.helpers import stop_all
from tests.integration.proxy.backends import Backend
from tests.integration.proxy.driver import ProxyProcess


@pytest.fixture
def start_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def start(
        backends: Iterable[Backend | str] | None,
        *flags: str,
        admin: bool = True,
        app: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ProxyProcess:
        args = [app] if app else ["proxy"]
        if backends is not None:
            args += ["--backends", ",".join(b if isinstance(b, str) else b.addr for b in backends)]
        p = ProxyProcess(tmp_path_factory.mktemp("proxy"), [*args, *flags], admin=admin, env=env)
        started.append(p)
        return p.start()

    try:
        yield start
    finally:
        stop_all(started)


@pytest.fixture
def backends() -> Iterator[Callable[..., list[Backend]]]:
    made: list[Backend] = []

    def make(n: int = 3, **kw: Any) -> list[Backend]:
        out = [Backend(name=f"b{len(made) + i}", **kw).start() for i in range(n)]
        made.extend(out)
        return out

    try:
        yield make
    finally:
        for b in made:
            b.stop()
