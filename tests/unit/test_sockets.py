"""Listening addresses: parsing every form, and listen() on TCP (IPv4/IPv6), unix sockets and fds."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from prefork_lb import sockets
from prefork_lb.sockets import Address, BindError, listen, parse_address


def _ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback here")


def connects(sock: socket.socket) -> bool:
    """True when a client can connect to the listening socket."""
    with socket.socket(sock.family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(sock.getsockname())
        return True


# -- parse_address --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "shown"),
    [
        ("127.0.0.1:8000", Address("tcp", host="127.0.0.1", port=8000), "127.0.0.1:8000"),
        ("localhost:0", Address("tcp", host="localhost", port=0), "localhost:0"),
        ("example.org:65535", Address("tcp", host="example.org", port=65535), "example.org:65535"),
        (":8000", Address("tcp", host="0.0.0.0", port=8000), "0.0.0.0:8000"),
        ("  127.0.0.1:80 ", Address("tcp", host="127.0.0.1", port=80), "127.0.0.1:80"),
        ("[::1]:8000", Address("tcp", host="::1", port=8000), "[::1]:8000"),
        ("[::]:443", Address("tcp", host="::", port=443), "[::]:443"),
        ("[fe80::1%eth0]:8000", Address("tcp", host="fe80::1%eth0", port=8000), "[fe80::1%eth0]:8000"),
        ("unix:/run/app.sock", Address("unix", path="/run/app.sock"), "unix:/run/app.sock"),
        ("unix:relative.sock", Address("unix", path="relative.sock"), "unix:relative.sock"),
        ("fd://3", Address("fd", fd=3), "fd://3"),
    ],
)
def test_parse_address(text: str, expected: Address, shown: str) -> None:
    addr = parse_address(text)
    assert addr == expected
    assert str(addr) == shown
    assert parse_address(str(addr)) == addr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8000", "invalid address '8000': expected HOST:PORT"),
        ("localhost", "invalid address 'localhost': expected HOST:PORT"),
        ("::1:8000", "invalid address '::1:8000': write IPv6 addresses as [ADDR]:PORT"),
        ("[::1]8000", "invalid address '[::1]8000': expected [IPV6]:PORT"),
        ("[::1", "invalid address '[::1': expected [IPV6]:PORT"),
        ("[::1]", "invalid address '[::1]': expected [IPV6]:PORT"),
        ("127.0.0.1:", "invalid port in '127.0.0.1:'"),
        ("127.0.0.1:http", "invalid port in '127.0.0.1:http'"),
        ("127.0.0.1:65536", "invalid port in '127.0.0.1:65536'"),
        ("127.0.0.1:-1", "invalid port in '127.0.0.1:-1'"),
        ("[::1]:x", "invalid port in '[::1]:x'"),
        ("unix:", "invalid address 'unix:': empty unix socket path"),
        ("fd://", "invalid address 'fd://': fd://N needs a number"),
        ("fd://three", "invalid address 'fd://three': fd://N needs a number"),
    ],
)
def test_parse_address_errors(text: str, message: str) -> None:
    with pytest.raises(BindError) as info:
        parse_address(text)
    assert str(info.value) == message


# -- listen(): TCP --------------------------------------------------------------------------------


def test_listen_ipv4_port_0() -> None:
    with listen(parse_address("127.0.0.1:0"), backlog=16) as sock:
        assert sock.family == socket.AF_INET
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port != 0
        assert sock.gettimeout() == 0.0  # non-blocking: gevent waits on it
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert connects(sock)


@needs_ipv6
def test_listen_ipv6_port_0() -> None:
    with listen(parse_address("[::1]:0")) as sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockname()[0] == "::1"
        assert sock.getsockname()[1] != 0
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert connects(sock)


def test_listen_reuseport_lets_two_sockets_share_a_port() -> None:
    with listen(parse_address("127.0.0.1:0"), reuseport=True) as first:
        port = first.getsockname()[1]
        with listen(parse_address(f"127.0.0.1:{port}"), reuseport=True) as second:
            assert second.getsockname()[1] == port


def test_listen_port_in_use() -> None:
    with listen(parse_address("127.0.0.1:0")) as first:
        port = first.getsockname()[1]
        with pytest.raises(BindError) as info:
            listen(parse_address(f"127.0.0.1:{port}"))
    assert str(info.value) == f"address 127.0.0.1:{port} is already in use"


def test_listen_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(sockets.socket, "getaddrinfo", fail)
    with pytest.raises(BindError) as info:
        listen(parse_address("no-such-host.invalid:80"))
    assert str(info.value) == "cannot resolve 'no-such-host.invalid': Name or service not known"


# -- listen(): unix sockets -----------------------------------------------------------------------


def test_listen_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    with listen(parse_address(f"unix:{path}")) as sock:
        assert sock.family == socket.AF_UNIX
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert sock.gettimeout() == 0.0
        assert connects(sock)


def test_listen_unix_replaces_stale_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(str(path))  # closed without unlink: what a killed server leaves behind
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with listen(parse_address(f"unix:{path}")) as sock:
        assert connects(sock)


def test_listen_unix_socket_in_use(tmp_path: Path) -> None:
    path = tmp_path / "busy.sock"
    with listen(parse_address(f"unix:{path}")):
        with pytest.raises(BindError) as info:
            listen(parse_address(f"unix:{path}"))
    assert str(info.value) == f"unix:{path} is in use by another process"


def test_listen_unix_path_is_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")
    with pytest.raises(BindError) as info:
        listen(parse_address(f"unix:{path}"))
    assert str(info.value) == f"unix:{path} exists and is not a socket"
    assert path.read_text() == "keep me"


def test_listen_unix_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "app.sock"
    with pytest.raises(BindError) as info:
        listen(parse_address(f"unix:{path}"))
    assert str(info.value) == f"cannot listen on unix:{path}: No such file or directory"


def test_listen_unix_path_too_long_says_why(tmp_path: Path) -> None:
    path = tmp_path / ("a" * 120)
    with pytest.raises(BindError) as info:
        listen(parse_address(f"unix:{path}"))
    assert not str(info.value).endswith("None")


# -- listen(): inherited file descriptors ---------------------------------------------------------


def test_listen_inherited_fd() -> None:
    with socket.socket() as original:
        original.bind(("127.0.0.1", 0))
        original.listen(8)
        fd = os.dup(original.fileno())
        with listen(parse_address(f"fd://{fd}")) as sock:
            assert sock.fileno() == fd
            assert sock.getsockname() == original.getsockname()
            assert sock.gettimeout() == 0.0
            assert connects(sock)


def test_listen_fd_that_is_not_a_socket(tmp_path: Path) -> None:
    with open(tmp_path / "plain", "wb") as f:
        fd = f.fileno()
        with pytest.raises(BindError) as info:
            listen(parse_address(f"fd://{fd}"))
    assert str(info.value) == f"fd://{fd} is not a usable socket: Socket operation on non-socket"


def test_handoff_messages_carry_the_accept_times_of_their_descriptors() -> None:
    from prefork_lb.sockets import accept_times, handoff_data_size, handoff_message

    msg = handoff_message([1.5, 2.25, 3.0])
    assert len(msg) == handoff_data_size(3)
    assert accept_times(msg, 3) == [1.5, 2.25, 3.0]
    assert accept_times(b"c", 2) == [0.0, 0.0], "an older dispatcher's message: times unknown"
    assert accept_times(msg, 2) == [0.0, 0.0], "a count that does not match: unknown, not garbage"
    assert handoff_data_size(64) == 513
