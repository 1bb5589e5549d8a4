"""Listening sockets: TCP over IPv4/IPv6, unix sockets, inherited file descriptors, and systemd
(socket activation with LISTEN_FDS, readiness with NOTIFY_SOCKET).

Address forms: ``HOST:PORT``, ``[IPV6]:PORT``, ``unix:PATH``, ``fd://N``.
"""

from __future__ import annotations

import array
import errno
import logging
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger("prefork_lb.error")


class BindError(Exception):
    """An address that cannot be listened on: reported as one line, exit code 2."""


@contextmanager
def naming(setting: str) -> Iterator[None]:
    """A BindError raised inside says which setting the address came from, e.g.
    "address 127.0.0.1:9000 is already in use (--stats-bind, default 127.0.0.1:9000)"."""
    try:
        yield
    except BindError as exc:
        raise BindError(f"{exc} ({setting})") from None


@dataclass(frozen=True)
class Address:
    kind: str  # tcp | unix | fd
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    text = text.strip()
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise BindError(f"invalid address {text!r}: empty unix socket path")
        return Address("unix", path=path)
    if text.startswith("fd://"):
        try:
            return Address("fd", fd=int(text[5:]))
        except ValueError:
            raise BindError(f"invalid address {text!r}: fd://N needs a number") from None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise BindError(f"invalid address {text!r}: expected [IPV6]:PORT")
        port_s = rest[1:]
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise BindError(f"invalid address {text!r}: expected HOST:PORT")
        if ":" in host:
            raise BindError(f"invalid address {text!r}: write IPv6 addresses as [ADDR]:PORT")
    try:
        port = int(port_s)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise BindError(f"invalid port in {text!r}") from None
    return Address("tcp", host=host or "0.0.0.0", port=port)


def listen(addr: Address, backlog: int = 2048, reuseport: bool = False) -> socket.socket:
    """Create, bind and listen. Errors a user can cause become BindError."""
    if addr.kind == "fd":
        try:
            sock = socket.socket(fileno=addr.fd)
        except OSError as exc:
            raise BindError(f"fd://{addr.fd} is not a usable socket: {exc.strerror}") from None
        sock.setblocking(False)
        return sock
    if addr.kind == "unix":
        _remove_stale_unix_socket(addr.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(addr.path)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            raise BindError(f"cannot listen on unix:{addr.path}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        return sock
    sock = _bound_tcp(addr, reuseport)
    try:
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise _tcp_error(addr, exc) from None
    sock.setblocking(False)
    return sock


def listen_private(path: str, backlog: int = 128) -> socket.socket:
    """A unix socket only its owner can connect to: created 0600 (umask set around bind, so it
    never exists with wider rights), a stale one replaced, a live one refused (BindError)."""
    _remove_stale_unix_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on unix:{path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    sock.setblocking(False)
    return sock


def refuse_taken(addr: Address) -> None:
    """BindError when another socket holds this TCP address, even one with SO_REUSEPORT.

    A SO_REUSEPORT bind succeeds next to any listener of the same user that has the option
    too: a second server would join the first one's group (and re-program its steering).
    A bind without the option fails while anything listens there, so it is tried first,
    then closed (a bound socket that never listened leaves nothing behind)."""
    if addr.kind != "tcp" or addr.port == 0:
        return
    _bound_tcp(addr, reuseport=False).close()


def _bound_tcp(addr: Address, reuseport: bool) -> socket.socket:
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"cannot resolve {addr.host!r}: {exc.strerror}") from None
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise _tcp_error(addr, exc) from None
    return sock


def _tcp_error(addr: Address, exc: OSError) -> BindError:
    if exc.errno == errno.EADDRINUSE:
        return BindError(f"address {addr} is already in use")
    if exc.errno == errno.EACCES:
        return BindError(f"permission denied binding {addr}")
    return BindError(f"cannot listen on {addr}: {exc.strerror}")


def _remove_stale_unix_socket(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(f"unix:{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover from a previous run
    else:
        raise BindError(f"unix:{path} is in use by another process")
    finally:
        probe.close()


# -- SO_REUSEPORT steering --------------------------------------------------------------------
# A classic BPF program attached to a reuseport group picks the index of the socket that gets a
# new connection. Sockets are indexed in the order they joined, and the master only ever adds
# or removes the last slot, so index == slot. Steering with "random % active" keeps new
# connections off a slot that is being removed while its queue is drained.

SO_ATTACH_REUSEPORT_CBPF = 51
_SKF_AD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_RANDOM
_BPF_LD_W_ABS, _BPF_ALU_MOD_K, _BPF_RET_A = 0x20, 0x94, 0x16


def steer_reuseport(sock: socket.socket, active: int) -> bool:
    """Send new connections to group indices 0..active-1 only. False where not supported."""
    import ctypes

    class SockFilter(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_uint16),
            ("jt", ctypes.c_uint8),
            ("jf", ctypes.c_uint8),
            ("k", ctypes.c_uint32),
        ]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]

    program = (SockFilter * 3)(
        SockFilter(_BPF_LD_W_ABS, 0, 0, _SKF_AD_RANDOM),
        SockFilter(_BPF_ALU_MOD_K, 0, 0, max(1, active)),
        SockFilter(_BPF_RET_A, 0, 0, 0),
    )
    fprog = SockFprog(3, ctypes.cast(program, ctypes.POINTER(SockFilter)))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))
    except OSError:
        return False
    return True


# -- systemd ------------------------------------------------------------------------------------


def systemd_listen_fds() -> list[int] | None:
    """The sockets systemd passed us (socket activation), once: the variables are removed so
    that no child takes them for its own. None when there are none for this process."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or not os.environ.get("LISTEN_FDS"):
        return None
    n = int(os.environ["LISTEN_FDS"])
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    return list(range(3, 3 + n))


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state, when it asked through NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(message.encode())
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("sd_notify failed: %s", exc)


# -- handoff messages (the dispatcher's sendmsg, the worker's recv_fds) ---------------------------

# A handoff message's data: b"t", then the CLOCK_MONOTONIC time (system-wide) at which the
# dispatcher accepted each connection, as float64 in the order of the descriptors: the worker
# measures its first request's queue wait from there.
HANDOFF_TIMES = b"t"


def handoff_data_size(fds: int) -> int:
    """The most data bytes a handoff message of ``fds`` descriptors carries."""
    return len(HANDOFF_TIMES) + 8 * fds


def handoff_message(accepted: list[float]) -> bytes:
    """The data of a handoff message for connections accepted at these times."""
    return HANDOFF_TIMES + array.array("d", accepted).tobytes()


def accept_times(msg: bytes, n: int) -> list[float]:
    """The accept times a handoff message carries for its ``n`` descriptors (0.0: unknown, as
    from a dispatcher older than the worker during an upgrade, which sent b"c")."""
    if msg[:1] == HANDOFF_TIMES and len(msg) == handoff_data_size(n):
        return array.array("d", msg[1:]).tolist()
    return [0.0] * n
