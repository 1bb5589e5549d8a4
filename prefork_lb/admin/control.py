"""The control socket's server side, in the admin process: what ``prefork_lb ctl`` talks to.

The master binds the unix socket (--control-socket, 0600: prefork_lb.sockets.listen_private)
and keeps it; the admin process (prefork_lb.admin.child) serves it with :class:`ControlServer`
and answers each request with :class:`ControlActions`. The protocol (one JSON object per line,
the commands, the exit codes) is prefork_lb.admin.protocol.

How a command acts, without a new channel to the master:

* ``status`` and ``workers`` read shared memory (the scoreboard, the master's totals) and, with
  a proxy, its documents over the private link (prefork_lb.admin.link);
* ``reload``, ``reopen-logs`` and ``stop`` send the master the signal it already understands
  (HUP, USR1, TERM) once the answer is written; ``stop --graceful-timeout`` and ``scale`` first
  write their value into a control word of the totals (prefork_lb.admin.totals), which the
  master takes when it handles the signal (TERM, TTIN);
* ``backend ...`` and ``cache purge`` are questions on the link; the proxy applies them
  (prefork_lb.proxy.operator).

Waiting is the client's part: ``reload`` answers with the workers it saw before the HUP and
the client polls ``status`` until their successors are ready (prefork_lb.ctl), so the answer
never depends on this process outliving the reload that replaces it.

Invariants: no client can stop another from being served or crash this process: each
connection has its own thread (at most :data:`MAX_CLIENTS` at once; more wait in the listen
queue), a request line is bounded (REQUEST_MAX) and must arrive within READ_TIMEOUT, an answer
is written within WRITE_TIMEOUT, and any error ends that one connection.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from prefork_lb import scoreboard as sb
from prefork_lb.admin import protocol as p
from prefork_lb.admin.dashboard import dashboard_doc
from prefork_lb.admin.link import ProxyLink
from prefork_lb.admin.metrics import psutil_info
from prefork_lb.admin.totals import Totals

log = logging.getLogger("prefork_lb.error")

MAX_CLIENTS = 64
WRITE_TIMEOUT = 5.0
HELPER_SLOT, ADMIN_SLOT = -1, -2  # prefork_lb.dispatch.base's (which imports this package)
NO_PROXY = "this server has no proxy (backends exist with --dispatch proxy or prefork_lb proxy)"
NOT_ANSWERING = "the proxy is not answering (it may be restarting); try again"

Reply = tuple[dict[str, Any], "Callable[[], None] | None"]  # the answer, what to do once it is written


class ControlActions:
    """What each command does; ``kill`` and the process info are injected for tests."""

    def __init__(
        self,
        board: sb.Scoreboard,
        totals: Totals,
        dispatch: str,
        link: ProxyLink | None,
        graceful_timeout: float,
        kill: Callable[[int, int], None] = os.kill,
        shutdown_delay: float = 0.0,
        process_info: Callable[[int], tuple[float, float] | None] = psutil_info,
        pools: Mapping[int, str] | None = None,
    ) -> None:
        self.board = board
        self.totals = totals
        self.dispatch = dispatch
        self.link = link
        self.graceful_timeout = graceful_timeout
        self.shutdown_delay = shutdown_delay  # --shutdown-delay: a TERM serves this long first
        self.kill = kill
        self.process_info = process_info
        # --mount: each worker slot's pool (its route); each pool has its own workers=, which
        # scale cannot change. None without --mount.
        self.pools = pools

    @property
    def master_pid(self) -> int:
        return int(self.totals.header()["master_pid"])

    def max_workers(self) -> int:
        """The most worker slots the scoreboard holds: two entries each (a reload's overlap),
        and two each for the helper and the admin process."""
        return max(1, (self.board.entries - 4) // 2)

    def handle(self, req: dict[str, Any]) -> Reply:
        cmd = req["cmd"]
        if cmd in ("status", "workers"):
            return self.status(), None
        if cmd == "backend":
            return self.backend(req), None
        if cmd == "cache":
            return self.cache(req), None
        return getattr(self, cmd.replace("-", "_"))(req)  # type: ignore[no-any-return]

    # -- reading ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        docs = self.proxy_docs() if self.link is not None else None
        doc = dashboard_doc(self.board, self.totals, self.dispatch, self.process_info, None)
        header = self.totals.header()
        master = doc["master"]
        master["boot_failed"] = int(header["boot_failed"])
        master["max_workers"] = self.max_workers()
        out = {
            "mode": self.dispatch,
            "health": doc["health"],
            "master": master,
            "processes": self.processes(),
            "workers": self.with_pools(doc["workers"]),
            "in_flight": sum(w["in_flight"] for w in doc["workers"]),
            "served": sum(int(w["served"]) for w in doc["workers"]),
        }
        if self.link is not None:
            out["backends"] = backend_list(docs)
            if docs is None:
                out["proxy"] = NOT_ANSWERING
            elif not doc["workers"] and docs.get("health"):  # the standalone proxy: its backends'
                out["health"] = docs["health"].get("status", out["health"])
        return out

    def with_pools(self, workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """--mount: each worker's row says its pool (the route)."""
        pools = self.pools
        if pools is None:
            return workers
        return [{**w, "pool": pools[w["slot"]]} if w["slot"] in pools else w for w in workers]

    def processes(self) -> list[dict[str, Any]]:
        """The helper (the proxy, the handoff dispatcher) and the admin processes."""
        out = []
        for e in self.board.entries_in_use():
            if e.slot < 0:
                role = "admin" if e.slot == ADMIN_SLOT else "helper"
                out.append({"role": role, "pid": e.pid, "state": sb.STATE_NAMES.get(e.state, "unknown")})
        return sorted(out, key=lambda r: (r["role"], r["pid"]))

    def proxy_docs(self) -> dict[str, Any] | None:
        assert self.link is not None
        stats = self.link.ask("stats")
        return None if stats is None else {"stats": stats, "health": self.link.ask("health")}

    # -- the master -------------------------------------------------------------------------------

    def signal_master(self, sig: signal.Signals) -> Callable[[], None]:
        pid = self.master_pid

        def send() -> None:
            try:
                self.kill(pid, sig)
            except OSError as exc:
                log.warning("control socket: cannot signal the master (pid %d): %s", pid, exc)

        return send

    def reload(self, req: dict[str, Any]) -> Reply:
        answer = {
            "master_pid": self.master_pid,
            "before": [e.pid for e in self.board.entries_in_use() if e.slot >= 0],
            "before_helper": [e.pid for e in self.board.entries_in_use() if e.slot == HELPER_SLOT],
            "boot_failed": int(self.totals.header()["boot_failed"]),
        }
        return answer, self.signal_master(signal.SIGHUP)

    def scale(self, req: dict[str, Any]) -> Reply:
        current = int(self.totals.header()["target"])
        if current == 0:
            raise p.CommandError("scale: the standalone proxy has no workers (see backend add/remove)")
        if self.pools is not None:
            raise p.CommandError("scale: with --mount each pool has its workers= (change them and restart)")
        target = p.scale_target(req["workers"], current, self.max_workers())
        send = self.signal_master(signal.SIGTTIN)
        totals = self.totals

        def ask() -> None:
            totals.request_scale(target)
            send()

        return {"master_pid": self.master_pid, "from": current, "workers": target}, ask

    def reopen_logs(self, req: dict[str, Any]) -> Reply:
        return {"master_pid": self.master_pid}, self.signal_master(signal.SIGUSR1)

    def stop(self, req: dict[str, Any]) -> Reply:
        grace = req.get("graceful_timeout")
        send = self.signal_master(signal.SIGTERM)
        totals = self.totals

        def ask() -> None:
            if grace is not None:
                totals.request_stop_grace(grace)
            send()

        answer = {
            "master_pid": self.master_pid,
            "graceful_timeout": self.graceful_timeout if grace is None else grace,
            "shutdown_delay": self.shutdown_delay,
        }
        return answer, ask

    # -- the proxy --------------------------------------------------------------------------------

    def backend(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.link is None:
            raise p.CommandError(f"backend: {NO_PROXY}")
        if req["op"] == "list":
            docs = self.proxy_docs()
            if docs is None:
                raise p.CommandError(NOT_ANSWERING, p.EXIT_FAILED)
            return {"backends": backend_list(docs)}
        question = {k: v for k, v in req.items() if k != "cmd"}
        got = self.link.ask("backend " + json.dumps(question, separators=(",", ":")))
        if got is None:
            raise p.CommandError(NOT_ANSWERING, p.EXIT_FAILED)
        if "error" in got:
            raise p.CommandError(f"backend {req['op']}: {got['error']}")
        return got

    def cache(self, req: dict[str, Any]) -> dict[str, Any]:
        """``cache purge [PREFIX]``: the proxy process drops what matches from its cache."""
        if self.link is None:
            raise p.CommandError(f"cache: {NO_PROXY}")
        question = {k: v for k, v in req.items() if k != "cmd"}
        got = self.link.ask("cache " + json.dumps(question, separators=(",", ":")))
        if got is None:
            raise p.CommandError(NOT_ANSWERING, p.EXIT_FAILED)
        if "error" in got:
            raise p.CommandError(f"cache {req['op']}: {got['error']}")
        return got


def backend_list(docs: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The proxy's backends from its /lb-stats and /lb-health: name, state (up, down,
    draining, disabled), weight, in flight, requests, errors, p50 and p99 (ms)."""
    if docs is None:
        return []
    health = {b.get("name"): b for b in (docs.get("health") or {}).get("backends", [])}
    out = []
    for b in (docs.get("stats") or {}).get("backends", []):
        h = health.get(b.get("name"), {})
        lat = b.get("latency_ms") or {}
        state = b.get("state") or ("up" if h.get("healthy") else "down")
        out.append(
            {
                "name": b.get("name"),
                "state": state,
                "weight": b.get("weight", 1),
                "in_flight": h.get("in_flight", 0),
                "requests": b.get("requests", 0),
                "errors": b.get("errors", 0),
                "p50_ms": lat.get("p50"),
                "p99_ms": lat.get("p99"),
                **({"slot": h["slot"]} if "slot" in h else {}),
                **({"pool": b["pool"]} if b.get("pool") else {}),
                **({"reason": h["reason"]} if h.get("reason") else {}),
            }
        )
    return out


class ControlServer:
    """Accepts on the control socket (shared with a successor admin process during a reload)
    and answers each connection in its own thread."""

    def __init__(self, listener: socket.socket, handle: Callable[[dict[str, Any]], Reply]) -> None:
        self.listener = listener
        self.handle = handle
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe()
        # Clients being answered, and the accept loop's end: shutdown() waits for both, so a
        # connection this process accepted while its successor was starting still gets its answer.
        self._active = 0
        self._idle = threading.Condition()
        self._accepting_done = threading.Event()

    def serve_forever(self) -> None:
        try:
            self._accept_until_stopped()
        finally:
            self._accepting_done.set()

    def _accept_until_stopped(self) -> None:
        listener = self.listener
        listener.setblocking(False)
        while not self.stopping:
            try:
                ready, _, _ = select.select([listener.fileno(), self._wake_r], [], [], 1.0)
            except InterruptedError:
                continue
            if listener.fileno() not in ready:
                continue
            self.slots.acquire()
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):  # the other admin process took it
                self.slots.release()
                continue
            except OSError as exc:
                self.slots.release()
                log.warning("control socket: accept failed: %s", exc.strerror or exc)
                time.sleep(0.1)  # EMFILE and the like: do not spin
                continue
            with self._idle:
                self._active += 1
            threading.Thread(target=self.serve_client, args=(conn,), name="admin-ctl", daemon=True).start()

    def shutdown(self, wait: float = 0.0) -> None:
        """Stop accepting; with ``wait``, give the clients already accepted up to that many
        seconds to get the answer to the request they are sending."""
        self.stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if wait <= 0:
            return
        deadline = time.monotonic() + wait
        self._accepting_done.wait(wait)
        with self._idle:
            while self._active and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)

    def serve_client(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(True)
            buf = b""
            answered = False
            while not (answered and self.stopping):  # an accepted client gets one answer at least
                line, buf = read_line(conn, buf)
                if line is None:
                    return
                if not line.strip():
                    continue
                reply, after = self.answer(line)
                conn.settimeout(WRITE_TIMEOUT)
                conn.sendall(reply)
                answered = True
                if after is not None:
                    after()
        except TooLong:
            try:
                conn.settimeout(WRITE_TIMEOUT)
                conn.sendall(p.refusal(f"request longer than {p.REQUEST_MAX} bytes"))
            except OSError:
                pass
        except OSError:
            pass  # the client went away or stalled: only its connection ends
        finally:
            conn.close()
            self.slots.release()
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def answer(self, line: bytes) -> tuple[bytes, Callable[[], None] | None]:
        try:
            doc, after = self.handle(p.parse_request(line))
        except p.CommandError as exc:
            return p.refusal(str(exc), exc.code), None
        except Exception as exc:  # a bug must not take the admin process down
            log.exception("control socket: the command failed")
            return p.refusal(f"internal error: {exc}", p.EXIT_FAILED), None
        return p.answer(True, **doc), after


class TooLong(Exception):
    """A request line past REQUEST_MAX bytes."""


def read_line(conn: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
    """The next line (None: the client closed or missed READ_TIMEOUT) and what follows it."""
    deadline = time.monotonic() + p.READ_TIMEOUT
    while b"\n" not in buf:
        if len(buf) > p.REQUEST_MAX:
            raise TooLong
        left = deadline - time.monotonic()
        if left <= 0:
            return None, b""
        conn.settimeout(left)
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            return None, b""
        if not chunk:
            return None, b""
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    if len(line) > p.REQUEST_MAX:
        raise TooLong
    return line, rest
