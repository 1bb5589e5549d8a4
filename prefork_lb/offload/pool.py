"""The parent side of the offload pool: ``OffloadPool``, its children, and its fork safety.

``OffloadPool(size=N)`` runs picklable functions in child processes; ``submit()`` blocks only the
calling greenlet (or thread): the wait is on a socket, through gevent's own fd waits when the
``socket`` module is monkey-patched, plain ``poll`` otherwise; outside gevent an asyncio task
waits on the loop instead (``prefork_lb.offload.aio``, through these same children). A pool made without a size has
``PREFORK_LB_OFFLOAD_PROCESSES`` processes, else the usable CPUs (``prefork_lb.resources``:
affinity and cgroup quota). The per-process default
pool that ``prefork_lb.offload(fn, *args)`` uses is kept in ``prefork_lb.offload.default``.

multiprocessing.Pool and ProcessPoolExecutor are not used: their helper threads hang under
gevent monkey-patching. Each child here is a clean interpreter (``sys.executable -c ...`` through
``multiprocessing.util.spawnv_passfds``, which closes every fd but the one passed) running
``prefork_lb.offload.child``, so it never inherits a gevent hub or the server's listening sockets.
What the two sides send each other is ``prefork_lb.offload.wire``.

Invariants:
- a child runs at most one task at a time; the parent sends a task frame only to an idle child
  and reads exactly one response frame back before the child is idle again;
- a child whose state is unknown (timeout, the caller interrupted, a protocol error) is killed
  with SIGKILL, reaped and replaced, never reused; ``stats()["restarts"]`` counts replacements;
- no child outlives its pool: ``close()`` ends them; if the owner dies (SIGKILL included) each
  child sees EOF on its socket (a watcher thread polls for it, even mid-task) and, where it was
  spawned from the owner's main thread, also gets PR_SET_PDEATHSIG;
- a pool belongs to the process that made it: after ``fork()`` the inherited copy drops its fds
  without touching the parent's children (and the default pool is made afresh in the child).
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from prefork_lb.offload import wire
from prefork_lb.offload.counters import CANCELLED, COMPLETED, FAILED, TASKS, TIMED_OUT
from prefork_lb.offload.slots import Slots

__all__ = ["OffloadError", "OffloadPool", "reap_orphans"]

_ENV_PROCESSES = "PREFORK_LB_OFFLOAD_PROCESSES"
_CLOSE_GRACE_S = 1.0
# The directory holding the prefork_lb package, put first on a child's sys.path so it imports
# this copy of prefork_lb.offload.child whatever its working directory.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class OffloadError(RuntimeError):
    """The pool could not run the task: the worker process died, the pool is closed, ..."""


class _WaitTimeout(Exception):
    """Internal: a wait on a child's socket ran past its deadline."""


def _gevent_active() -> bool:
    """True when gevent has monkey-patched ``socket``: waits must then go through the hub."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


def _describe_status(status: int | None) -> str:
    if status is None:
        return "exit status unknown"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return f"wait status {status}"


def _on_main_thread(use_gevent: bool) -> bool:
    """PR_SET_PDEATHSIG fires when the *thread* that forked the child exits: only ask for it when
    that thread is the main one (real thread id, not a greenlet's)."""
    if use_gevent:
        from gevent import monkey

        native_id = monkey.get_original("_thread", "get_native_id")
    else:
        native_id = threading.get_native_id
    return bool(native_id() == os.getpid())  # Linux: the main thread's tid is the pid


def _preparation() -> dict[str, Any]:
    """What a child needs to unpickle the parent's functions: sys.path and the __main__ module
    (as multiprocessing's spawn does; functions defined in a script pickle as ``__main__.f``)."""
    data: dict[str, Any] = {"sys_path": list(sys.path)}
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name is not None:
        data["init_main_from_name"] = name
    else:
        path = getattr(main, "__file__", None)
        if path:
            data["init_main_from_path"] = os.path.abspath(path)
    return data


class _Child:
    """The parent's handle on one worker process: pid, socket fd, read buffer."""

    __slots__ = ("pid", "fd", "buffer", "status", "reaped", "discarded")

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd
        self.buffer = bytearray()
        self.status: int | None = None  # the wait status, once reaped (None: unknown)
        self.reaped = False
        self.discarded = False


class _Job:
    __slots__ = ("index", "task_id", "fn_name", "deadline", "timeout", "started")

    def __init__(self, index: int, task_id: int, fn_name: str, timeout: float | None) -> None:
        self.index = index
        self.task_id = task_id
        self.fn_name = fn_name
        self.timeout = timeout
        self.started = now = time.monotonic()
        self.deadline = None if timeout is None else now + timeout


_POOLS: weakref.WeakSet[OffloadPool] = weakref.WeakSet()


class OffloadPool:
    """Up to ``size`` child processes, started on demand, running one task each at a time."""

    def __init__(self, size: int | None = None, start_method: str = "spawn") -> None:
        if start_method not in ("spawn", "forkserver"):
            # A forked child would inherit the gevent hub and the listening sockets.
            raise ValueError(f"start_method must be 'spawn' or 'forkserver', not {start_method!r}")
        size = _default_size() if size is None else size
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, not {size!r}")
        self.size = size
        self.start_method = start_method
        self._gevent = _gevent_active()
        self._owner_pid = os.getpid()
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._lock = threading.Lock()  # never held across a wait, so greenlets never contend
        self._restarts = 0
        self._next_id = 0
        self._closed = False
        if self._gevent:
            from gevent.lock import Semaphore

            self._slots: Any = Semaphore(size)
        else:
            self._slots = Slots(size)  # waited on by threads and by asyncio tasks (offload_async)
        _POOLS.add(self)

    # -- public API ---------------------------------------------------------------------------

    def __enter__(self) -> OffloadPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in a child and return its result (or raise its exception,
        with the remote traceback attached as a note). ``timeout`` counts from the moment the
        task is handed to a child; past it the child is killed and TimeoutError raised."""
        return self._run(fn, [(args, kwargs)], timeout)[0]

    def map(self, fn: Callable[..., Any], iterable: Iterable[Any], timeout: float | None = None) -> list[Any]:
        """``[fn(x) for x in iterable]`` on up to ``size`` children at once, in order. The first
        failure is raised; tasks still running then are abandoned (their children replaced)."""
        return self._run(fn, [((item,), {}) for item in iterable], timeout)

    def stats(self) -> dict[str, int]:
        with self._lock:
            busy, idle = len(self._busy), len(self._idle)
        return {"size": self.size, "busy": busy, "idle": idle, "restarts": self._restarts}

    def pids(self) -> list[int]:
        """The pids of the children started now (idle and busy)."""
        with self._lock:
            return sorted(c.pid for c in (*self._idle, *self._busy))

    def close(self) -> None:
        """End every child: idle ones get EOF and a grace period, then SIGKILL; busy ones are
        killed at once (their callers get OffloadError). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._owner_pid:
            return
        with self._lock:
            idle, busy = self._idle, list(self._busy)
            self._idle = []
        for child in busy:
            self._signal(child, signal.SIGKILL)
        for child in idle:
            self._close_fd(child)
        deadline = time.monotonic() + _CLOSE_GRACE_S
        for child in idle:
            if not self._reap(child, deadline):
                self._signal(child, signal.SIGKILL)
                self._reap(child, None)

    def __del__(self) -> None:
        # Last resort for a pool never closed: no waiting here (a GC pass may run in any
        # greenlet); children exit on EOF, and a SIGKILL makes sure of it.
        if getattr(self, "_closed", True) or os.getpid() != getattr(self, "_owner_pid", None):
            return
        self._closed = True
        for child in (*self._idle, *self._busy):
            self._signal(child, signal.SIGKILL)
            self._close_fd(child)
            _ORPHANS.append(child.pid)

    # -- scheduling ---------------------------------------------------------------------------

    def _run(
        self,
        fn: Callable[..., Any],
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        timeout: float | None,
    ) -> list[Any]:
        self._check_usable()
        fn_name = wire.describe(fn)
        payloads = [wire.dumps_task(fn, fn_name, args, kwargs) for args, kwargs in calls]
        results: list[Any] = [None] * len(calls)
        pending = collections.deque(range(len(calls)))
        running: dict[_Child, _Job] = {}
        held = 0
        try:
            while pending or running:
                while pending:
                    # Block for a slot only when nothing of ours is running, so two map()s
                    # holding part of the pool each still make progress.
                    if not self._slots.acquire(blocking=not running):
                        break
                    held += 1
                    child = self._take_child()
                    index = pending.popleft()
                    job = _Job(index, self._new_id(), fn_name, timeout)
                    running[child] = job
                    TASKS.submitted()
                    try:
                        self._send(child, job, payloads[index])
                    except TimeoutError:
                        del running[child]  # (discarded by _send)
                        TASKS.ended(TIMED_OUT)
                        raise
                for child, job in self._wait_responses(running):
                    del running[child]
                    took = time.monotonic() - job.started
                    try:
                        results[job.index] = self._finish(child, job)
                    except BaseException:
                        TASKS.ended(FAILED, took)
                        raise
                    TASKS.ended(COMPLETED, took)
                    self._slots.release()
                    held -= 1
        finally:
            for child in running:
                TASKS.ended(CANCELLED)
                self._discard(child)
            for _ in range(held):
                self._slots.release()
        return results

    def _wait_responses(self, running: dict[_Child, _Job]) -> list[tuple[_Child, _Job]]:
        """Wait until at least one running child has a full response frame buffered (returned
        with the child still busy), or raise TimeoutError for one past its deadline."""
        while True:
            done = [(c, j) for c, j in running.items() if wire.frame_ready(c.buffer)]
            if done:
                return done
            now = time.monotonic()
            expired = [(c, j) for c, j in running.items() if j.deadline is not None and now >= j.deadline]
            if expired:
                child, job = expired[0]
                del running[child]
                TASKS.ended(TIMED_OUT)
                self._discard(child)
                raise TimeoutError(
                    f"offload: {job.fn_name} did not finish within {job.timeout} s "
                    f"(worker pid {child.pid} killed and replaced)"
                )
            deadlines = [j.deadline for j in running.values() if j.deadline is not None]
            wait = None if not deadlines else max(0.0, min(deadlines) - now)
            for child in self._wait_readable(running, wait):
                try:
                    self._fill(child, running[child])
                except OffloadError:  # its process died
                    del running[child]
                    TASKS.ended(FAILED)
                    raise

    def _fill(self, child: _Child, job: _Job) -> None:
        """Read what is there; EOF means the child died."""
        try:
            data = os.read(child.fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            child.buffer += data
            return
        self._discard(child, kill=False)
        raise OffloadError(
            f"offload: worker process died running {job.fn_name}: "
            f"{_describe_status(child.status)} (pid {child.pid}; replaced)"
        )

    def _finish(self, child: _Child, job: _Job) -> Any:
        task_id, status, payload = wire.pop_frame(child.buffer)
        if task_id != job.task_id or child.buffer:
            self._discard(child)
            raise OffloadError(f"offload: protocol error from worker pid {child.pid} (replaced)")
        self._release_child(child)
        if status == wire.STATUS_OK:
            try:
                return wire.loads_result(payload)
            except Exception as exc:
                raise TypeError(
                    f"offload: the result of {job.fn_name} could not be unpickled: {exc}"
                ) from exc
        tb_text, error = wire.loads_error(payload)
        if error is None:
            error = OffloadError(
                f"offload: {job.fn_name} raised an exception that could not be sent back:\n{tb_text}"
            )
        note = f"\nRemote traceback (offload worker pid {child.pid}):\n{tb_text.rstrip()}"
        if hasattr(error, "add_note"):
            error.add_note(note)
        else:  # Python 3.10: no add_note; the same __notes__ for code that reads them, and a
            # cause, so that the traceback printed shows where in the pool process it was raised
            error.__notes__ = [*getattr(error, "__notes__", []), note]
            error.__cause__ = OffloadError(note)
        raise error

    # -- children -----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if os.getpid() != self._owner_pid:
            raise OffloadError(
                "offload: this pool belongs to the process that created it "
                f"(pid {self._owner_pid}); create a new pool after fork()"
            )
        if self._closed:
            raise OffloadError("offload: the pool is closed")

    def _new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def _take_child(self) -> _Child:
        """An idle child (checked alive) or a new one; the caller holds a slot."""
        while True:
            self._check_usable()
            with self._lock:
                child = self._idle.pop() if self._idle else None
                if child is not None:
                    self._busy.add(child)
            if child is None:
                child = self._spawn()
                with self._lock:
                    self._busy.add(child)
                return child
            # An idle child has nothing to say: a readable socket is EOF, the child died idle.
            if not self._readable_now(child.fd):
                return child
            self._discard(child, kill=False)

    def _release_child(self, child: _Child) -> None:
        with self._lock:
            self._busy.discard(child)
            if not self._closed:
                self._idle.append(child)
                return
        self._close_fd(child)
        self._reap(child, time.monotonic() + _CLOSE_GRACE_S)

    def _discard(self, child: _Child, kill: bool = True) -> None:
        """Kill (if asked), reap and forget a child whose state is unknown; counts a restart.
        The replacement starts on demand, when a caller next needs a child. Idempotent."""
        if child.discarded:
            return
        child.discarded = True
        with self._lock:
            self._busy.discard(child)
            if child in self._idle:
                self._idle.remove(child)
            if not self._closed:
                self._restarts += 1
        if kill:
            self._signal(child, signal.SIGKILL)
        self._close_fd(child)
        if not self._reap(child, None if kill else time.monotonic() + _CLOSE_GRACE_S):
            self._signal(child, signal.SIGKILL)
            self._reap(child, None)

    def _spawn(self) -> _Child:
        import multiprocessing.util

        parent_sock, child_sock = socket.socketpair()
        parent_fd, child_fd = parent_sock.detach(), child_sock.detach()
        deathsig = _on_main_thread(self._gevent)
        code = (
            f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); "
            "from prefork_lb.offload.child import main; main()"
        )
        argv = [sys.executable, "-c", code, str(child_fd), str(os.getpid()), "1" if deathsig else "0"]
        try:
            pid = multiprocessing.util.spawnv_passfds(os.fsencode(sys.executable), argv, [child_fd])
        except BaseException:
            os.close(parent_fd)
            raise
        finally:
            os.close(child_fd)
        os.set_blocking(parent_fd, False)
        child = _Child(pid, parent_fd)
        prepare = wire.frame(wire.dumps_preparation(_preparation()), 0, wire.KIND_PREPARE)
        try:
            self._write_all(child, prepare, None)
        except OSError:
            pass  # the child died at once: the first task finds out and reports it
        return child

    def _send(self, child: _Child, job: _Job, payload: bytes) -> None:
        try:
            self._write_all(child, wire.frame(payload, job.task_id, wire.KIND_TASK), job.deadline)
        except _WaitTimeout:
            self._discard(child)
            raise TimeoutError(f"offload: {job.fn_name} did not finish within {job.timeout} s") from None
        except OSError:
            pass  # the child is gone: reading its response sees EOF and reports how it died

    def _write_all(self, child: _Child, data: bytes, deadline: float | None) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(child.fd, view) :]
            except BlockingIOError:
                self._wait_writable(child.fd, deadline)

    @staticmethod
    def _signal(child: _Child, sig: int) -> None:
        if not child.reaped:
            try:
                os.kill(child.pid, sig)
            except ProcessLookupError:
                pass

    @staticmethod
    def _close_fd(child: _Child) -> None:
        if child.fd >= 0:
            os.close(child.fd)
            child.fd = -1

    def _reap(self, child: _Child, deadline: float | None) -> bool:
        """waitpid() the child until ``deadline`` (None: wait for good); True once reaped."""
        while not child.reaped:
            try:
                pid, status = os.waitpid(child.pid, 0 if deadline is None else os.WNOHANG)
            except ChildProcessError:
                child.reaped = True  # reaped elsewhere (e.g. a SIGCHLD handler): status unknown
                break
            if pid:
                child.reaped, child.status = True, status
                break
            if deadline is None or time.monotonic() >= deadline:
                return False
            self._sleep(0.01)
        return True

    # -- waiting: gevent's hub when monkey-patched, poll() otherwise ----------------------------

    def _sleep(self, seconds: float) -> None:
        if self._gevent:
            import gevent

            gevent.sleep(seconds)
        else:
            time.sleep(seconds)

    def _wait_readable(self, running: dict[_Child, _Job], timeout: float | None) -> list[_Child]:
        fds = [c.fd for c in running]
        if self._gevent:
            from gevent import select as gselect

            ready = gselect.select(fds, [], [], timeout)[0]
        else:
            import select

            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            ready = [fd for fd, _ in poller.poll(None if timeout is None else timeout * 1000)]
        by_fd = {c.fd: c for c in running}
        return [by_fd[fd] for fd in ready if fd in by_fd]

    def _wait_writable(self, fd: int, deadline: float | None) -> None:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if self._gevent:
            from gevent.socket import wait_write

            wait_write(fd, timeout=timeout, timeout_exc=_WaitTimeout())
            return
        import select

        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if not poller.poll(None if timeout is None else timeout * 1000):
            raise _WaitTimeout()

    @staticmethod
    def _readable_now(fd: int) -> bool:
        import select

        # select() with a zero timeout never blocks, patched or not.
        poll = getattr(select, "poll", None)
        if poll is None:  # gevent removes select.poll when patching
            return bool(select.select([fd], [], [], 0)[0])
        poller = poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))


def _after_fork_in_child() -> None:
    """A forked process must not use (or kill) the parent's children: drop the fds only."""
    for pool in list(_POOLS):
        pool._closed = True
        for child in (*pool._idle, *pool._busy):
            try:
                os.close(child.fd)
            except OSError:
                pass
            child.fd = -1
        pool._idle, pool._busy = [], set()
    _ORPHANS.clear()


_ORPHANS: list[int] = []  # pids of children of pools garbage-collected unclosed, not yet reaped

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def reap_orphans() -> None:
    """Reap (without waiting) the children of pools that were garbage-collected unclosed."""
    for pid in _ORPHANS:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    _ORPHANS.clear()


def _default_size() -> int:
    raw = os.environ.get(_ENV_PROCESSES, "").strip()
    if not raw:
        from prefork_lb.resources import cpu_count

        return cpu_count()
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"{_ENV_PROCESSES} must be a positive integer, not {raw!r}")
    return size
