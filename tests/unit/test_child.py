"""The child-process contract (prefork_lb.child) in a real fork: the steps in order, signals
routed to handle_*, readiness and heartbeat on the scoreboard, the exit code."""

from __future__ import annotations

import os
import signal
import time
from typing import ClassVar

import pytest

from prefork_lb import scoreboard as sb
from prefork_lb.child import ChildContext, ChildProcess, describe_exit
from prefork_lb.config import build

BLOCKED = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1}


class Recorder(ChildProcess):
    """Writes what happens to it on a pipe; stops on TERM/INT/QUIT."""

    role: ClassVar[str] = "recorder"

    def __init__(self, ctx: ChildContext, out: int, boot_code: int = 0, boot_delay: float = 0.0) -> None:
        super().__init__(ctx)
        self.out, self.boot_code, self.boot_delay = out, boot_code, boot_delay
        self.stopped: bool | None = None

    def say(self, text: str) -> None:
        os.write(self.out, (text + "\n").encode())

    def boot(self) -> int:
        self.say("boot")
        time.sleep(self.boot_delay)  # a TERM sent now must wait for handle_term
        return self.boot_code

    def stop(self, graceful: bool) -> None:
        self.stopped = graceful

    def reopen_logs(self) -> None:
        self.say("usr1")

    def run(self) -> int:
        self.notify_ready()
        while self.stopped is None:
            self.beat()
            time.sleep(0.01)
        self.say(f"stop graceful={self.stopped}")
        return 7


class Forked:
    def __init__(self, master_pid: int | None = None, **kwargs: object) -> None:
        self.board = sb.Scoreboard(2)
        self.entry = self.board.allocate(0, 0)
        self.r, w = os.pipe()
        cfg = build({"workers": 1}, environ={}, app_uri="x:app")
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED)  # as Arbiter.spawn forks
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.r)
            ctx = ChildContext(0, cfg, self.board, self.entry, master_pid or os.getppid(), -1, [], None)  # type: ignore[arg-type]
            Recorder(ctx, w, **kwargs).main()  # type: ignore[arg-type]
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(w)
        self.buf = b""

    def line(self, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            assert time.monotonic() < deadline, "no line from the child"
            chunk = os.read(self.r, 4096)
            if not chunk:
                break
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def wait_ready(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.board.state(self.entry) != sb.READY:
            assert time.monotonic() < deadline, "child never became ready"
            time.sleep(0.01)

    def exit_code(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        os.close(self.r)
        return os.waitstatus_to_exitcode(status)


def test_signals_reach_the_handlers_and_run_returns_the_exit_code() -> None:
    child = Forked()
    assert child.line() == "boot"
    child.wait_ready()
    before = time.monotonic()
    time.sleep(0.05)
    assert child.board.heartbeat(child.entry) >= before, "run() beats"
    os.kill(child.pid, signal.SIGUSR1)
    assert child.line() == "usr1"
    os.kill(child.pid, signal.SIGTERM)
    assert child.line() == "stop graceful=True"
    assert child.exit_code() == 7


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_int_and_quit_stop_fast(sig: signal.Signals) -> None:
    child = Forked()
    child.wait_ready()
    os.kill(child.pid, sig)
    assert child.line() == "boot" and child.line() == "stop graceful=False"
    assert child.exit_code() == 7


def test_a_term_while_booting_waits_for_the_graceful_handler() -> None:
    child = Forked(boot_delay=0.3)
    assert child.line() == "boot"
    os.kill(child.pid, signal.SIGTERM)  # blocked since the fork: not a death by SIGTERM
    assert child.line() == "stop graceful=True"
    assert child.exit_code() == 7


def test_a_failed_boot_ends_the_process_with_its_code() -> None:
    child = Forked(boot_code=3)
    assert child.line() == "boot"
    assert child.line() == "", "run() never starts"
    assert child.exit_code() == 3
    assert child.board.state(child.entry) == sb.BOOTING


def test_a_child_whose_master_is_gone_exits_at_once() -> None:
    child = Forked(master_pid=1)  # not our parent: as if the master died before the fork settled
    assert child.line() == ""
    assert child.exit_code() == 0


def test_the_process_title_names_the_role() -> None:
    pytest.importorskip("setproctitle")
    child = Forked()
    child.wait_ready()
    with open(f"/proc/{child.pid}/cmdline", "rb") as f:
        title = f.read().split(b"\0")[0].decode()
    os.kill(child.pid, signal.SIGTERM)
    child.exit_code()
    assert title.startswith("prefork_lb: recorder [x:app]")


def test_exit_statuses_are_described() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-200) == "killed by signal 200"
