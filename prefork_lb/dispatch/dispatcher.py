"""The handoff dispatcher process: accepts and passes each connection to a worker.

Why a process of its own and not the master: the master stays a supervisor that does no I/O
on requests, so a bug or a stall here cannot stop supervision; a crashed dispatcher is
replaced like a worker while the listeners (owned by the master) keep queueing connections.
The channels and the listeners belong to the master (prefork_lb.dispatch.handoff.HandoffMode);
this process only writes to the sending ends.

Load: the dispatcher reads the scoreboard. A slot is eligible when its worker is ready and
has fewer than --worker-connections connections; its load is its requests in flight plus the
connections sent to it that it has not taken from the channel yet (sent - received), and
least_latency also sees the worker's latency EWMA.

Admission control (--max-concurrency): a worker holds at most max-concurrency + queue-size
requests (in its app, waiting, or connections on their way to it); the dispatcher sends no more
than that. When every ready worker is full, a new connection is refused here with 503 and
Retry-After (prefork_lb.admission.Shedder) instead of waiting for a worker whose loop may be
blocked by a view: the dispatcher's loop is never blocked by a request.
"""

from __future__ import annotations

import array
import logging
import select
import socket
import time
from typing import Any, ClassVar

from prefork_lb import scoreboard as sb
from prefork_lb.admission import Shedder, limit
from prefork_lb.child import ChildContext, ChildProcess
from prefork_lb.sockets import handoff_message

log = logging.getLogger("prefork_lb.error")

BATCH = 64  # connections accepted per listener per wake-up, and fds per message
SYNC_INTERVAL = 0.02  # seconds between scoreboard reads when idle


class Dispatcher:
    def __init__(
        self,
        cfg: Any,
        board: sb.Scoreboard,
        process: ChildProcess,
        listeners: list[socket.socket],
        channels: dict[int, socket.socket],
    ) -> None:
        self.cfg = cfg
        self.board = board
        self.process = process  # heartbeat and readiness go through the child contract
        self.listeners = {s.fileno(): s for s in listeners}
        self.channels = channels
        self.strategy = _make_strategy(cfg.strategy)
        self.sent: dict[int, int] = {}
        self.entries: dict[int, int] = {}  # slot -> scoreboard entry of its newest ready worker
        # (connection, client address, when it was accepted: CLOCK_MONOTONIC)
        self.pending: list[tuple[socket.socket, Any, float]] = []
        self.stopping = False
        self.reopen = False  # USR1 arrived: reopen the error log in the loop
        self.last_sync = 0.0
        self.limit = limit(cfg.max_concurrency, cfg.queue_size)
        self.room: dict[int, int] = {}  # slot -> requests it can still take (with a limit)
        self.ready: set[int] = set()  # slots with a ready worker, as of the last sync
        self.ep: Any = None
        self.shedder = Shedder(self._watch, self._unwatch)

    def sync(self) -> None:
        """Read every worker's state and load from the scoreboard into the strategy."""
        ready = self.board.ready_load(self.channels, time.monotonic())
        strategy = self.strategy
        limit = self.cfg.worker_connections
        known = set(strategy.keys())
        # A worker with no latency sample yet (just started) counts as typical: the median of
        # the others. Otherwise least_latency would never try it and it would never get one.
        samples = sorted(v[2] for v in ready.values() if v[2])
        typical = samples[len(samples) // 2] if samples else 0
        for slot in known - set(ready):
            strategy.remove(slot)
        # With admission control, a worker whose places and queue are taken would answer 503
        # (or not at all while a view blocks it): skip it while another has room.
        admit = self.limit
        self.ready = set(ready)
        room = self.room
        room.clear()
        for slot, (in_flight, received, latency, conns) in ready.items():
            if slot not in known:
                strategy.add(slot)
                self.sent.setdefault(slot, received)
            pending = max(0, self.sent.get(slot, 0) - received)
            if admit:
                room[slot] = admit - in_flight - pending
            if conns + pending >= limit or (admit and in_flight + pending >= admit):
                strategy.mark_down(slot)
                continue
            strategy.mark_up(slot)
            latency = latency or typical
            strategy.set_load(slot, in_flight + pending, latency / 1e6 if latency else None)
        self.last_sync = time.monotonic()

    def dispatch(self) -> None:
        """Pass every pending connection to a worker; keep those no worker can take yet."""
        if not self.pending:
            return
        by_slot: dict[int, list[tuple[socket.socket, Any, float]]] = {}
        left = []
        strategy = self.strategy
        for item in self.pending:
            # The client's address is the hint ``hash`` keys on (the others ignore it).
            addr = item[1]
            slot = strategy.pick(addr[0] if isinstance(addr, tuple) else None)
            if slot is None:
                if self.all_full():
                    self.refuse(item[0])
                else:
                    left.append(item)
                continue
            by_slot.setdefault(slot, []).append(item)
            strategy.on_start(slot)  # the next pick of this batch sees it
            if self.limit:
                left_room = self.room[slot] = self.room.get(slot, 0) - 1
                if left_room <= 0:
                    strategy.mark_down(slot)  # full until the next sync says otherwise
        for slot, conns in by_slot.items():
            for i in range(0, len(conns), BATCH):
                part = conns[i : i + BATCH]
                if self.send(slot, [c for c, _, _ in part], [t for _, _, t in part]):
                    self.sent[slot] = self.sent.get(slot, 0) + len(part)
                    for c, _, _ in part:
                        c.close()
                else:
                    left.extend(part)
        self.pending = left

    def all_full(self) -> bool:
        """Every ready worker has its admission limit taken (none ready: wait for one)."""
        room = self.room
        return bool(self.limit and self.ready) and all(room.get(slot, 0) <= 0 for slot in self.ready)

    def refuse(self, conn: socket.socket) -> None:
        """503 for a connection no worker has room for (counted in our scoreboard entry)."""
        self.shedder.refuse(conn, time.monotonic())
        entry = getattr(self.process, "entry", None)
        if entry is not None:
            entry.shed()

    def _watch(self, fd: int) -> None:
        if self.ep is not None:
            self.ep.register(fd, select.EPOLLIN)

    def _unwatch(self, fd: int) -> None:
        if self.ep is not None:
            self.ep.unregister(fd)

    def send(self, slot: int, conns: list[socket.socket], accepted: list[float]) -> bool:
        fds = array.array("i", [c.fileno() for c in conns])
        data = handoff_message(accepted)
        try:
            self.channels[slot].sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except (BlockingIOError, InterruptedError):
            self.strategy.mark_down(slot)  # its channel is full: the worker is not reading
            return False
        except OSError as exc:
            log.error("handoff to slot %d failed: %s", slot, exc)
            self.strategy.mark_down(slot)
            return False
        return True

    def accept(self, lsock: socket.socket) -> None:
        is_tcp = lsock.family in (socket.AF_INET, socket.AF_INET6)
        now = time.monotonic()  # one clock read per wake-up: the batch arrived together
        for _ in range(BATCH):
            try:
                conn, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("accept: %s", exc)
                return
            if is_tcp:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.pending.append((conn, addr, now))

    def run(self) -> None:
        ep = self.ep = select.epoll()
        for fd, s in self.listeners.items():
            s.setblocking(False)
            ep.register(fd, select.EPOLLIN)
        self.sync()
        self.process.notify_ready()
        try:
            while not self.stopping:
                # Waiting connections that no worker could take: retry soon, without
                # accepting more (they stay in the kernel's queue meanwhile).
                timeout = 0.005 if self.pending else (0.05 if self.shedder else 0.25)
                try:
                    events = ep.poll(timeout) if not self.pending else []
                    if self.pending:
                        time.sleep(timeout)
                        if self.shedder:
                            events = [e for e in ep.poll(0) if e[0] not in self.listeners]
                except InterruptedError:
                    events = []
                if not self.process.beat():
                    break
                if self.reopen:
                    self.reopen = False
                    self.process.reopen_logs()
                now = time.monotonic()
                if events or self.pending or now - self.last_sync > SYNC_INTERVAL:
                    self.sync()
                shedder = self.shedder
                for fd, _ in events:
                    lsock = self.listeners.get(fd)
                    if lsock is not None:
                        self.accept(lsock)
                    else:
                        shedder.readable(fd, now)
                if shedder:
                    shedder.expire(now)
                self.dispatch()
        finally:
            # Hand over what we hold; the kernel queue waits for the next dispatcher.
            deadline = time.monotonic() + 5
            while self.pending and time.monotonic() < deadline:
                self.sync()
                self.dispatch()
                if self.pending:
                    time.sleep(0.01)
            for conn, _, _ in self.pending:
                conn.close()
            self.shedder.close_all()
            ep.close()


def _make_strategy(name: str) -> Any:
    from prefork_lb.balance import make

    return make(name)


class DispatcherChild(ChildProcess):
    """The dispatcher as a child of the master: TERM, INT and QUIT all stop it after it has
    handed over what it holds; USR1 reopens the error log between two wake-ups."""

    role: ClassVar[str] = "dispatcher"

    def __init__(
        self, ctx: ChildContext, listeners: list[socket.socket], channels: dict[int, socket.socket]
    ) -> None:
        super().__init__(ctx)
        self.dispatcher = Dispatcher(ctx.cfg, ctx.board, self, listeners, channels)

    def stop(self, graceful: bool) -> None:
        self.dispatcher.stopping = True

    def handle_usr1(self) -> None:
        self.dispatcher.reopen = True  # a signal handler only records: the loop reopens

    def run(self) -> int:
        self.dispatcher.run()
        return 0
