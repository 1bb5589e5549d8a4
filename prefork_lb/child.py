"""The contract of every process the master forks: the WSGI worker, the handoff dispatcher, the proxy.

The master gives a child a :class:`ChildContext` (its slot, the settings, its scoreboard entry,
the master's pid, the boot-message pipe, the sockets it serves) and calls
:meth:`ChildProcess.main`, which never returns. ``main`` runs the same steps for every kind:

1. leave the master: the master's signal handlers off, death tied to the master (Linux
   PR_SET_PDEATHSIG); stop at once when the master died before that was armed;
2. the process title, ``prefork_lb: ROLE [NAME]``;
3. a first heartbeat on the scoreboard, then :meth:`~ChildProcess.boot` (subclass work: import the
   app, build the server or the event loop); a non-zero code ends the process there;
4. signals: TERM -> :meth:`~ChildProcess.handle_term`, INT -> ``handle_int``, QUIT ->
   ``handle_quit``, USR1 -> ``handle_usr1``, installed through :meth:`~ChildProcess.install`
   (plain ``signal.signal``, gevent's or asyncio's), then unblocked;
5. :meth:`~ChildProcess.run` until stopped; it calls :meth:`~ChildProcess.notify_ready` once it
   serves and :meth:`~ChildProcess.beat` at least every --timeout / 4.

Invariant: the master forks with its signals blocked (Arbiter.spawn), so no master handler ever
runs in a child and a TERM sent while booting waits for the child's own graceful handler.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, Protocol

from prefork_lb import scoreboard as sb

log = logging.getLogger("prefork_lb.error")

# Exit codes the master understands: 0 normal, EXIT_APP_LOAD (the app path is wrong: the
# message went through the boot pipe), EXIT_BOOT (the app raised on import, or its lifespan
# startup failed), EXIT_WRONG_INTERFACE (--interface auto: the app is of the other interface
# than this worker's, nothing on the boot pipe; see prefork_lb.interface).
EXIT_APP_LOAD = 2
EXIT_BOOT = 3
EXIT_WRONG_INTERFACE = 4
PR_SET_PDEATHSIG = 1
MASTER_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


class WorkerSetup(Protocol):
    """What a worker asks its dispatch mode (a prefork_lb.dispatch.DispatchMode)."""

    @property
    def shared_accept(self) -> bool: ...

    def configure_worker(self, options: Any) -> None: ...

    def attach(self, server: Any, socks: list[socket.socket]) -> None: ...


@dataclass
class ChildContext:
    """What the master hands a child at fork: everything it may use, nothing of the master's own."""

    slot: int  # its dispatch position; HELPER_SLOT (-1) for the dispatcher or the proxy
    cfg: Any  # the Config as it was at fork
    board: sb.Scoreboard
    entry: int  # its scoreboard entry
    master_pid: int
    boot_fd: int  # write end of the boot-message pipe (prefork_lb.boot_message, on a failed boot)
    sockets: list[socket.socket]  # what it serves: listeners or handoff channels
    mode: WorkerSetup  # the dispatch mode, for what differs between modes inside a worker
    # For the config file's hooks only (gunicorn's signatures): the master's record of this
    # process and the object hooks receive as their ``server`` argument. The child never reads them.
    record: Any = None
    hook_server: Any = None

    def hook(self, name: str, *args: Any) -> None:
        call_hook(self.cfg, name, *args)


def title_label(cfg: Any, default: str) -> str:
    """What a process title shows in brackets: --proc-name, the app, the --mount routes."""
    if cfg.proc_name or cfg.app_uri:
        return str(cfg.proc_name or cfg.app_uri)
    mounts = getattr(cfg, "mounts", None)
    return "mount " + " ".join(m.route for m in mounts.mounts) if mounts is not None else default


def call_hook(cfg: Any, name: str, *args: Any) -> None:
    """Call the config file's hook ``name``, if it has one; a hook that raises is logged, and
    never stops the process that calls it (the master or a child)."""
    fn = cfg.hooks.get(name)
    if fn is None:
        return
    try:
        fn(*args)
    except Exception:
        log.exception("hook %s failed", name)


def describe_exit(code: int) -> str:
    """A child's exit code (os.waitstatus_to_exitcode) in words."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the master dies, SIGKILL included (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def leave_master(master_pid: int) -> bool:
    """The master's signal handlers off (the signals stay blocked), death with the master.
    False when the master died before the death signal was armed."""
    for sig in MASTER_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    die_with_parent()
    return os.getppid() == master_pid


def set_title(title: str) -> None:
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    setproctitle(title)


class ChildProcess:
    """Base of every child of the master; subclasses fill in boot, run and stop."""

    role: ClassVar[str] = "child"  # the process title's word: worker N, dispatcher, proxy
    # Signals unblocked while booting (None: all stay blocked until the handlers are set).
    boot_mask: ClassVar[set[signal.Signals] | None] = None

    def __init__(self, ctx: ChildContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.entry = ctx.board.handle(ctx.entry)

    # -- the sequence ---------------------------------------------------------------------------

    def main(self) -> NoReturn:
        """Never returns: the process exits here with :meth:`start`'s code."""
        code = 1
        try:
            code = self.start()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            try:
                self.entry.publish()  # the last counts, for the master to fold into its totals
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:
                pass
            os._exit(code)

    def start(self) -> int:
        if not leave_master(self.ctx.master_pid):
            return 0
        if self.boot_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.boot_mask)
        set_title(f"prefork_lb: {self.title()} [{title_label(self.cfg, 'standalone')}]")
        self.entry.beat()
        code = self.boot()
        if code:
            return code
        self.init_signals()
        self.unblock_signals()
        return self.run()

    def unblock_signals(self) -> None:
        """Blocked since the fork; unblocked once the handlers are set (a loop that only sees
        signals while it runs, as uvloop's, unblocks them from its first callback instead)."""
        signal.pthread_sigmask(signal.SIG_SETMASK, set())

    def title(self) -> str:
        return self.role

    def boot(self) -> int:
        """Prepare to serve; a non-zero exit code stops here."""
        return 0

    def run(self) -> int:
        raise NotImplementedError

    # -- signals ----------------------------------------------------------------------------------

    def init_signals(self) -> None:
        self.install(signal.SIGTERM, self.handle_term)
        self.install(signal.SIGINT, self.handle_int)
        self.install(signal.SIGQUIT, self.handle_quit)
        self.install(signal.SIGUSR1, self.handle_usr1)

    def install(self, sig: signal.Signals, handler: Callable[[], None]) -> None:
        """Plain handlers; the gevent worker and the asyncio proxy use their loop's."""
        signal.signal(sig, lambda signum, frame: handler())

    def handle_term(self) -> None:
        self.stop(graceful=True)

    def handle_int(self) -> None:
        self.stop(graceful=False)

    def handle_quit(self) -> None:
        self.stop(graceful=False)

    def handle_usr1(self) -> None:
        self.reopen_logs()

    def stop(self, graceful: bool) -> None:
        raise NotImplementedError

    def graceful_timeout(self) -> float:
        """How long a graceful stop drains: --graceful-timeout, or what ``prefork_lb ctl stop
        --graceful-timeout S`` asked the master for (scoreboard STOP_GRACE)."""
        return self.entry.stop_grace(self.cfg.graceful_timeout)

    def reopen_logs(self) -> None:
        from prefork_lb.logs import setup_error_log

        setup_error_log(self.cfg.log_level, self.cfg.error_logfile)

    # -- state on the scoreboard ---------------------------------------------------------------

    def notify_ready(self) -> None:
        """The master counts this process as serving from now (and may stop its predecessor)."""
        self.entry.set_state(sb.READY)

    def beat(self) -> bool:
        """Heartbeat for the master's watchdog. False once the master is gone."""
        self.entry.beat()
        return os.getppid() == self.ctx.master_pid
