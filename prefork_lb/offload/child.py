"""The code a pool process runs: read a task frame, run it, write one response frame, repeat.

A pool process is a fresh interpreter started by ``OffloadPool`` (``prefork_lb.offload.pool``)
as ``python -c "...; from prefork_lb.offload.child import main; main()" FD PARENT_PID DEATHSIG``
with only FD (its end of a socketpair) open. This module uses the stdlib and the wire format
(``prefork_lb.offload.wire``) only: no gevent, no server code, so the process holds no hub and no
listener. (Importing it runs the package's ``__init__``, whose imports are stdlib-only too.)

Invariants:
- one task at a time, answered by exactly one frame carrying the task's id;
- the process ends (``os._exit``, no atexit handlers, no flushing of the parent's buffers) when
  the parent's end of the socket closes, even in the middle of a task (a watcher thread polls for
  it), or when the parent is already gone at start-up; with DEATHSIG=1 it is also armed with
  PR_SET_PDEATHSIG=SIGKILL;
- it ignores SIGINT (Ctrl-C is the owner's to handle) and runs at a lower priority (niceness +10).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
import traceback

from prefork_lb.offload import wire

PR_SET_PDEATHSIG = 1
NICE = 10  # scheduling niceness added to pool processes
_POLLRDHUP = 0x2000  # Linux's value, where the select module does not name it


def main() -> None:
    """Entry point of a pool process: ``argv = [-c, fd, parent_pid, deathsig]``."""
    fd, parent_pid, deathsig = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's to handle
    if deathsig:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(0)  # the owner died before the death signal was armed
    os.set_blocking(fd, True)  # a socketpair made under gevent comes non-blocking
    # CPU work yields the CPU to the event loops that serve requests: when cores are scarce, a
    # computing pool process must not delay the quick requests its worker is answering.
    try:
        os.nice(NICE)
    except OSError:
        pass
    threading.Thread(target=_watch_parent, args=(fd,), name="offload-parent-watch", daemon=True).start()
    sock = socket.socket(fileno=fd)
    try:
        _serve(sock)
    finally:
        sock.close()
    os._exit(0)


def _serve(sock: socket.socket) -> None:
    """Answer frames until EOF or a socket error."""
    while True:
        try:
            length, task_id, kind = wire.parse_header(_read_exact(sock, wire.HEADER.size))
            payload = _read_exact(sock, length)
        except (EOFError, OSError):
            return
        if kind == wire.KIND_PREPARE:
            _prepare(payload)
            continue
        try:
            sock.sendall(run_task(task_id, payload))
        except OSError:
            return


def _watch_parent(fd: int) -> None:
    """Exit as soon as the parent's end of the socket closes, even in the middle of a task."""
    import select

    rdhup = getattr(select, "POLLRDHUP", _POLLRDHUP)
    poller = select.poll()
    poller.register(fd, rdhup)
    while True:
        for _, events in poller.poll():
            if events & (rdhup | select.POLLHUP | select.POLLERR):
                os._exit(0)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _prepare(payload: bytes) -> None:
    """Take on the parent's sys.path and __main__ module, so that its functions unpickle here."""
    try:
        from multiprocessing import spawn

        spawn.prepare(wire.loads_preparation(payload))
    except BaseException:
        print(
            "offload worker: could not import the parent's __main__; functions defined there "
            "will fail to unpickle:",
            file=sys.stderr,
        )
        traceback.print_exc()


def run_task(task_id: int, payload: bytes) -> bytes:
    """The response frame for one task frame's payload (never raises for the task's sake)."""
    fn_name = "the task"
    try:
        fn, args, kwargs = wire.loads_task(payload)
        fn_name = wire.describe(fn)
        result = fn(*args, **kwargs)
    except BaseException as exc:
        return wire.frame(wire.dumps_error(exc), task_id, wire.STATUS_ERROR)
    try:
        data = wire.dumps_result(result)
    except Exception as exc:
        try:
            raise TypeError(
                f"offload: cannot pickle the result of {fn_name} ({type(result).__qualname__}): {exc}"
            ) from exc
        except TypeError as type_error:
            return wire.frame(wire.dumps_error(type_error), task_id, wire.STATUS_ERROR)
    return wire.frame(data, task_id, wire.STATUS_OK)
