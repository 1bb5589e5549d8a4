"""The one public face: the package ``prefork_lb.offload`` is itself the callable, reached by every
documented spelling; the default pool behind it starts on first use, is forgotten after fork and
closes on ``close()``; the old private names still resolve."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import prefork_lb
import prefork_lb.offload
from prefork_lb.offload import OffloadError, OffloadPool, default_pool, default_pool_if_started, offload


def add(a: int, b: int = 0) -> int:
    return a + b


@pytest.fixture(autouse=True)
def closed_default_pool() -> object:
    offload.close()
    yield None
    offload.close()


def test_every_spelling_is_the_same_object() -> None:
    from prefork_lb import offload as from_package

    assert offload is from_package is prefork_lb.offload is sys.modules["prefork_lb.offload"]
    assert prefork_lb.OffloadPool is OffloadPool is prefork_lb.offload.OffloadPool
    assert issubclass(OffloadError, RuntimeError)
    assert type(offload).__name__ == "OffloadModule"


def test_calling_the_package_uses_the_default_pool() -> None:
    assert default_pool_if_started() is None
    assert offload(add, 1, b=2) == 3
    pool = default_pool_if_started()
    assert pool is not None and pool is default_pool()
    assert offload.map(add, [1, 2, 3]) == [1, 2, 3]
    # Type checkers do not see a module as callable; ``offload`` imported from the package is typed.
    assert prefork_lb.offload(add, 5, timeout=10) == 5  # type: ignore[operator]
    stats = offload.stats()
    assert stats["size"] == pool.size and stats["busy"] == 0 and stats["restarts"] == 0
    offload.close()
    assert default_pool_if_started() is None
    assert offload(add, 2) == 2
    assert default_pool_if_started() not in (None, pool)


def test_timeout_is_a_keyword_of_the_call_not_of_the_function() -> None:
    with pytest.raises(TypeError):
        offload(add, 1, c=2)  # reaches the function in the pool process, which rejects it
    assert offload(add, 1, timeout=5) == 1


def test_the_old_child_entry_point_still_resolves() -> None:
    from prefork_lb.offload import _child_main  # type: ignore[attr-defined]
    from prefork_lb.offload.child import main

    assert _child_main is main


FRESH = """
import os, sys
import psutil
import prefork_lb
assert "prefork_lb.offload" not in sys.modules  # imported on first use only
module = prefork_lb.offload  # the lazy import
assert module is sys.modules["prefork_lb.offload"]
assert module.default_pool_if_started() is None
assert not psutil.Process().children(), "importing starts no process"
assert prefork_lb.offload(abs, -1) == 1
from prefork_lb.offload import default_pool_if_started, offload
assert offload.stats()["busy"] == 0
first = default_pool_if_started()
assert first is not None
pid = os.fork()
if pid == 0:
    ok = default_pool_if_started() is None and offload(abs, -2) == 2 and default_pool_if_started() is not first
    offload.close()
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert default_pool_if_started() is first and offload(abs, -3) == 3
print("ok")
"""


def test_fresh_interpreter_lazy_import_and_fork() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FRESH)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
