"""What a dispatch mode is: everything that differs between the ways a connection reaches a worker.

The arbiter holds one :class:`DispatchMode` and asks it, never ``cfg.dispatch``:

* binding: :meth:`~DispatchMode.bind` (fresh), :meth:`~DispatchMode.adopt` (listeners handed
  down by an old master on USR2), :meth:`~DispatchMode.adopt_systemd` (LISTEN_FDS);
* what a slot's worker gets (:meth:`~DispatchMode.worker_sockets`) and what the helper process
  gets (:meth:`~DispatchMode.helper_sockets`), and the helper itself (:attr:`helper_role`,
  :meth:`~DispatchMode.helper_process`: none, the handoff dispatcher, the proxy);
* the admin listener (--stats-bind, every mode: :meth:`~DispatchMode.bind_admin`), the control
  socket (--control-socket: :meth:`~DispatchMode.bind_control`), and what the
  admin process gets (:meth:`~DispatchMode.admin_sockets`, :meth:`~DispatchMode.admin_link`);
* resizing (:meth:`~DispatchMode.resize`: slot listeners, SO_REUSEPORT steering, channels);
* what USR2 hands to the next master (:meth:`~DispatchMode.handover`);
* inside the worker, how it takes connections (:meth:`~DispatchMode.attach`,
  :attr:`shared_accept`, :meth:`~DispatchMode.configure_worker`).

Invariants: every socket the mode creates is in :attr:`sockets` (the master closes them all and
hands them all on USR2); the master keeps them open for its whole life, so connections queued
on a listener or a channel survive the death of the process that serves it. This module imports
neither the arbiter nor gevent: the configuration reads the registry (prefork_lb.dispatch).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from prefork_lb.settings.base import flag_and_default
from prefork_lb.sockets import Address, BindError, listen, listen_private, naming, parse_address

if TYPE_CHECKING:
    from prefork_lb.admin.totals import Totals
    from prefork_lb.child import ChildContext, ChildProcess

log = logging.getLogger("prefork_lb.error")

HELPER_SLOT = -1  # the handoff dispatcher or the proxy: supervised like a worker in this slot
ADMIN_SLOT = -2  # the admin process (--stats-bind), in every mode


@dataclass
class SocketSet:
    """Every socket the master holds for a mode."""

    addresses: list[Address] = field(default_factory=list)
    shared: list[socket.socket] = field(default_factory=list)  # accepted on by every worker, or the helper
    slots: dict[int, list[socket.socket]] = field(default_factory=dict)  # a slot's own listeners
    channels: dict[int, tuple[socket.socket, socket.socket]] = field(default_factory=dict)  # handoff
    admin: list[socket.socket] = field(default_factory=list)  # the --stats-bind listener
    control: list[socket.socket] = field(default_factory=list)  # the --control-socket listener
    link: list[socket.socket] = field(default_factory=list)  # proxy: its end, the admin's end

    def all(self) -> list[socket.socket]:
        return (
            self.shared
            + [s for socks in self.slots.values() for s in socks]
            + [s for pair in self.channels.values() for s in pair]
            + self.admin
            + self.control
            + self.link
        )


def adopt_fd(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    os.set_inheritable(fd, False)
    return sock


class DispatchMode:
    """Kernel dispatch on shared listeners: the behaviour every mode starts from."""

    name: ClassVar[str] = ""
    helper_role: ClassVar[str | None] = None  # the helper process's name, None when there is none
    shared_accept: ClassVar[bool] = False  # workers take turns accepting (see worker.server.Server)
    admin_public: ClassVar[bool] = False  # --stats-bind public: the helper answers on the public port

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.sockets = SocketSet()
        self.requested: str = cfg.dispatch  # what the settings asked for (systemd can change it)

    # -- binding --------------------------------------------------------------------------------

    def bind(self, addresses: list[Address], num_workers: int) -> None:
        """Listen on every address (BindError for a user mistake)."""
        self.sockets.addresses = addresses
        with naming(flag_and_default(self.cfg, "bind")):
            for addr in addresses:
                if self.shares(addr):
                    self.sockets.shared.append(listen(addr, self.cfg.backlog))
        self.resize(num_workers)  # a slot's listeners say which setting they come from
        self.bind_admin()  # last: a public address that fails leaves nothing bound here
        self.bind_control()

    def bind_admin(self) -> None:
        """The --stats-bind listener, unless 'off' or 'public'. The default address taken (by
        another server on this machine) is a warning, not a failure; an explicit one fails."""
        value = self.cfg.stats_bind
        if value == "public" and not self.admin_public:
            raise BindError(f"--stats-bind public needs --dispatch proxy (this is --dispatch {self.name})")
        if value in ("off", "public", ""):
            if self.cfg.statsd_host:
                raise BindError(
                    f"--statsd-host needs the admin process, which --stats-bind {value} does not start"
                )
            return
        setting = flag_and_default(self.cfg, "stats_bind")
        try:
            with naming(setting):
                self.sockets.admin = [listen(parse_address(value), 64)]
        except BindError as exc:
            if "default" not in setting:
                raise
            log.warning("No admin listener: %s; set --stats-bind to another address, or off", exc)

    def bind_control(self) -> None:
        """The --control-socket listener (prefork_lb.admin.control), unless 'off'. Like
        --stats-bind, the default path taken by a running server is a warning, not a failure."""
        from prefork_lb.admin.protocol import socket_path

        path = socket_path(self.cfg.control_socket, self.cfg.pidfile, os.environ, os.getuid())
        if path is None:
            return
        try:
            self.sockets.control = [listen_private(path)]
        except BindError as exc:
            if self.cfg.control_socket:
                raise BindError(f"--control-socket: {exc}") from None
            log.warning("No control socket: %s; set --control-socket to another path, or off", exc)

    def has_admin(self) -> bool:
        """Whether the admin process runs: it serves --stats-bind and --control-socket."""
        return bool(self.sockets.admin or self.sockets.control)

    def shares(self, addr: Address) -> bool:
        """Whether an address is one listener shared by all (else one per slot)."""
        return True

    def adopt(self, spec: dict[str, Any], addresses: list[Address], num_workers: int) -> None:
        """Take the listeners an old master handed down (see :meth:`handover`)."""
        s = self.sockets
        s.addresses = addresses
        s.shared = [adopt_fd(fd) for fd in spec["shared"]]
        s.slots = {int(k): [adopt_fd(fd) for fd in v] for k, v in spec["slots"].items()}
        s.admin = [adopt_fd(fd) for fd in spec.get("admin", [])]
        s.control = [adopt_fd(fd) for fd in spec.get("control", [])]
        self.resize(num_workers)  # channels are per master: the new one makes its own

    def adopt_systemd(self, fds: list[int], num_workers: int) -> DispatchMode:
        """systemd socket activation: its sockets replace --bind; every worker shares them.
        Returns the mode to use from now on."""
        self.sockets.shared = [adopt_fd(fd) for fd in fds]
        self.sockets.addresses = [Address("fd", fd=fd) for fd in fds]
        self.resize(num_workers)
        self.bind_admin()
        self.bind_control()
        return self

    def handover(self) -> dict[str, Any]:
        """The descriptors USR2 hands to the next master (they are made inheritable first)."""
        s = self.sockets
        return {
            "shared": [x.fileno() for x in s.shared],
            "slots": {str(k): [x.fileno() for x in v] for k, v in s.slots.items()},
            "admin": [x.fileno() for x in s.admin],
            "control": [x.fileno() for x in s.control],
        }

    def reconfigure(self, cfg: Any) -> None:
        """A reload brought new settings. The mode itself stays: its listeners belong to it, and
        only a restart or USR2 can change it, so a different --dispatch is kept as it was."""
        if cfg.dispatch != self.requested:
            log.warning("SIGHUP: --dispatch %s needs a restart or USR2; keeping %s", cfg.dispatch, self.name)
        if cfg.dispatch != self.name:
            cfg.set("dispatch", self.name, "SIGHUP reload")
        self.cfg = cfg

    # -- slots ----------------------------------------------------------------------------------

    def resize(self, num_workers: int) -> bool:
        """The worker count changed (or was set). True when the helper process must be replaced
        to see the new slots."""
        return False

    def slot_listeners(self, slot: int) -> list[socket.socket]:
        return []

    def worker_sockets(self, slot: int) -> list[socket.socket]:
        return self.sockets.shared + self.slot_listeners(slot)

    def slot_port(self, slot: int) -> int:
        """The port written on the scoreboard for a slot's worker (0: none)."""
        return 0

    def close_slot(self, slot: int) -> None:
        for s in self.sockets.slots.pop(slot, []):
            s.close()

    # -- the helper process --------------------------------------------------------------------

    def helper_sockets(self) -> list[socket.socket]:
        return []

    def helper_process(self, ctx: ChildContext) -> ChildProcess:
        raise NotImplementedError(f"--dispatch {self.name} has no helper process")

    # -- the admin process -------------------------------------------------------------------------

    def admin_link(self) -> socket.socket | None:
        """The admin process's end of a channel to the helper (the proxy's numbers), or None."""
        return None

    def admin_sockets(self) -> list[socket.socket]:
        link = self.admin_link()
        return self.sockets.admin + self.sockets.control + ([link] if link is not None else [])

    def admin_process(self, ctx: ChildContext, totals: Totals) -> ChildProcess:
        from prefork_lb.admin.child import AdminChild

        s = self.sockets
        return AdminChild(
            ctx,
            totals,
            self.name,
            self.helper_role,
            s.admin[0] if s.admin else None,
            self.admin_link(),
            control=s.control[0] if s.control else None,
        )

    # -- inside the worker ------------------------------------------------------------------------

    def configure_worker(self, options: Any) -> None:
        """Per-mode worker options (a ServerOptions), set after the configuration's."""

    def attach(self, server: Any, socks: list[socket.socket]) -> None:
        """Give the worker's server what it serves."""
        for sock in socks:
            server.add_listener(sock)

    # -- messages -------------------------------------------------------------------------------

    def ready_message(self, num_workers: int, interfaces: dict[str, str] | None = None) -> str:
        """The "Ready" line; ``interfaces``: each --mount pool's route and what its workers are
        (learned under interface=auto: prefork_lb.pools.MountedInterfaces.learned)."""
        return f"Ready: {num_workers} worker{'' if num_workers == 1 else 's'} serving"
