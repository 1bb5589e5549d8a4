"""Apps and executor factories for the offload-executor tests (``--offload-executor``).

``python -m prefork_lb tests.apps_offload:app [--offload-executor ...]``:
/run/N: fib(N) offloaded, with where it ran (pid, thread, Dask worker) and the worker's pid;
/sleep/S?timeout=T: time.sleep(S) offloaded with that timeout; /gate?path=P[&timeout=T]: waits
offloaded until the file P exists (P.started says it began); /fail: the task raises ValueError
(500); /stats: offload.stats(); anything else: 'ok' at once, never offloaded.
A timeout answers 504 and an OffloadError 503, whichever executor ran it (the local pool too).

Factories for ``--offload-executor tests.apps_offload:NAME``: ``thread_executor`` (a
ThreadPoolExecutor), ``not_an_executor`` and ``failing_factory`` (refused at boot).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


def thread_executor() -> concurrent.futures.Executor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-executor")


def not_an_executor() -> object:
    return object()


def failing_factory() -> concurrent.futures.Executor:
    raise RuntimeError("no executor today")


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def where_fib(n: int) -> dict[str, Any]:
    """fib(n) and where it ran."""
    dask_worker = None
    distributed = sys.modules.get("distributed")  # loaded on a Dask worker; never imported here,
    if distributed is not None:  # as importing it changes how exceptions pickle (tblib)
        try:
            dask_worker = distributed.get_worker().address
        except ValueError:
            pass
    return {
        "result": fib(n),
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
        "dask_worker": dask_worker,
    }


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def wait_gate(path: str, limit: float = 60.0) -> str:
    """Write PATH.started, then wait (up to ``limit`` s) until PATH exists: a slow task whose
    start and end the test observes instead of timing."""
    with open(path + ".started", "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return "gate timeout"
        time.sleep(0.01)
    return "opened"


def fail(message: str) -> None:
    raise ValueError(message)


def die(code: int) -> None:
    """The process running the task ends at once (a pool process dying mid-task)."""
    os._exit(code)


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    from prefork_lb.offload import OffloadError

    offload = environ["prefork_lb.offload"]
    parts = environ["PATH_INFO"].strip("/").split("/")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    timeout = float(query["timeout"]) if "timeout" in query else None
    status, data = "200 OK", {"worker": os.getpid()}
    try:
        if parts[0] == "run":
            data["ran"] = offload(where_fib, int(parts[1]), timeout=timeout)
        elif parts[0] == "sleep":
            data["slept"] = offload(sleep, float(parts[1]), timeout=timeout)
        elif parts[0] == "gate":
            data["gate"] = offload(wait_gate, query["path"], timeout=timeout)
        elif parts[0] == "stats":
            data["stats"] = offload.stats()
        elif parts[0] == "fail":
            offload(fail, "as asked", timeout=timeout)
        else:
            data["fast"] = "ok"
    except TimeoutError as exc:
        status, data["error"] = "504 Gateway Timeout", f"timeout: {exc}"
    except OffloadError as exc:
        status, data["error"] = "503 Service Unavailable", f"offload error: {exc}"
    except ValueError as exc:
        status, data["error"] = "500 Internal Server Error", f"{type(exc).__name__}: {exc}"
    body = json.dumps(data).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
