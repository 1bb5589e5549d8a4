"""The pool process's side, driven in-process: one task payload in, one response frame out; in a
real pool process, what it has imported (the stdlib and the wire format, no gevent); and a pool
process started by hand, spoken to in frames, as an old or a new parent starts it."""

from __future__ import annotations

import ast
import multiprocessing.util
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import prefork_lb
from prefork_lb.offload import OffloadPool, child, wire

ROOT = str(Path(prefork_lb.__file__).resolve().parent.parent)


def add(a: int, b: int = 0) -> int:
    return a + b


def fail(message: str) -> None:
    raise ValueError(message)


def unpicklable_result() -> object:
    return threading.Lock()


def answer(task_id: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, int, bytes]:
    buffer = bytearray(child.run_task(task_id, wire.dumps_task(fn, "fn", args, kwargs)))
    assert wire.frame_ready(buffer)
    frame = wire.pop_frame(buffer)
    assert buffer == b"", "exactly one frame per task"
    return frame


def test_result_comes_back_under_the_task_id() -> None:
    task_id, status, payload = answer(9, add, 2, b=3)
    assert (task_id, status) == (9, wire.STATUS_OK)
    assert wire.loads_result(payload) == 5


def test_exception_comes_back_with_its_traceback() -> None:
    task_id, status, payload = answer(4, fail, "no")
    assert (task_id, status) == (4, wire.STATUS_ERROR)
    tb_text, error = wire.loads_error(payload)
    assert isinstance(error, ValueError) and str(error) == "no"
    assert "in fail" in tb_text


def test_unpicklable_result_is_a_type_error_naming_the_function() -> None:
    _, status, payload = answer(1, unpicklable_result)
    assert status == wire.STATUS_ERROR
    _, error = wire.loads_error(payload)
    assert isinstance(error, TypeError)
    assert "cannot pickle the result of" in str(error) and "unpicklable_result" in str(error)


def test_payload_that_does_not_unpickle_is_an_error_not_a_crash() -> None:
    buffer = bytearray(child.run_task(2, b"not a pickle"))
    task_id, status, payload = wire.pop_frame(buffer)
    assert (task_id, status) == (2, wire.STATUS_ERROR)
    assert wire.loads_error(payload)[1] is not None


def test_base_exceptions_come_back_too() -> None:
    _, status, payload = answer(3, sys.exit, 3)
    assert status == wire.STATUS_ERROR
    error = wire.loads_error(payload)[1]
    assert isinstance(error, SystemExit) and error.code == 3


MODULES = "sorted(m for m in __import__('sys').modules if m.split('.')[0] in ('prefork_lb', 'gevent'))"


def test_pool_process_imports_only_the_offload_package() -> None:
    with OffloadPool(size=1) as pool:
        # eval is a builtin, so unpickling the task imports nothing of its own.
        modules = pool.submit(eval, MODULES)
    assert "gevent" not in modules
    assert set(modules) <= {
        "prefork_lb",
        "prefork_lb.compiled",  # the package's __init__: PREFORK_LB_PURE_PYTHON
        "prefork_lb.offload",
        "prefork_lb.offload.child",
        "prefork_lb.offload.counters",
        "prefork_lb.offload.default",
        "prefork_lb.offload.pool",
        "prefork_lb.offload.slots",
        "prefork_lb.offload.wire",
    }, modules
    assert "prefork_lb.offload.child" in modules


def test_child_module_imports_stdlib_and_the_wire_module_only() -> None:
    tree = ast.parse(Path(child.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f"{node.module}.{alias.name}" for alias in node.names}
    ours = {name for name in imported if name.split(".")[0] in ("prefork_lb", "gevent")}
    assert ours == {"prefork_lb.offload.wire"}
    assert all(name.split(".")[0] in sys.stdlib_module_names for name in imported - ours), imported


@pytest.mark.parametrize(
    "entry",
    [
        "from prefork_lb.offload.child import main; main()",
        # What a parent loaded before the package existed runs: kept for in-place upgrades.
        "from prefork_lb.offload import _child_main; _child_main()",
    ],
)
def test_pool_process_speaks_the_wire_format(entry: str) -> None:
    parent, theirs = socket.socketpair()
    with parent:
        fd = theirs.detach()
        code = f"import sys; sys.path.insert(0, {ROOT!r}); {entry}"
        argv = [sys.executable, "-c", code, str(fd), str(os.getpid()), "0"]
        try:
            pid = multiprocessing.util.spawnv_passfds(os.fsencode(sys.executable), argv, [fd])
        finally:
            os.close(fd)
        parent.settimeout(30)
        prepare = wire.dumps_preparation({"sys_path": sys.path})
        parent.sendall(wire.frame(prepare, 0, wire.KIND_PREPARE))
        parent.sendall(wire.frame(wire.dumps_task(add, "add", (2,), {"b": 5}), 11, wire.KIND_TASK))
        buffer = bytearray()
        while not wire.frame_ready(buffer):
            chunk = parent.recv(65536)
            assert chunk, "the pool process closed its socket"
            buffer += chunk
        task_id, status, payload = wire.pop_frame(buffer)
        assert (task_id, status, wire.loads_result(payload)) == (11, wire.STATUS_OK, 7)
    # EOF on its socket ends it.
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
