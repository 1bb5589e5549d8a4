"""--dispatch reuseport: a SO_REUSEPORT listener per slot and TCP address; unix is shared."""

from __future__ import annotations

import logging
import os
import socket

import pytest

from prefork_lb.dispatch.shared import SharedMode
from prefork_lb.sockets import BindError, listen, parse_address


def test_each_slot_gets_its_own_listener_in_one_group(make_mode) -> None:
    mode = make_mode("reuseport")
    mode.bind([parse_address("127.0.0.1:0")], 2)
    assert not mode.sockets.shared
    assert set(mode.sockets.slots) == {0, 1}
    (s0,), (s1,) = mode.sockets.slots[0], mode.sockets.slots[1]
    assert s0.fileno() != s1.fileno()
    assert s0.getsockname() == s1.getsockname()  # port 0: the group is on the first slot's port
    assert s0.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    assert mode.worker_sockets(1) == [s1]
    assert mode.helper_role is None and not mode.shared_accept


def test_unix_addresses_are_shared_by_every_slot(make_mode, tmp_path) -> None:
    mode = make_mode("reuseport")
    mode.bind([parse_address("127.0.0.1:0"), parse_address(f"unix:{tmp_path}/s")], 2)
    (unix,) = mode.sockets.shared
    assert unix.family == socket.AF_UNIX
    assert mode.worker_sockets(0) == [unix, *mode.sockets.slots[0]]


def test_unix_only_has_no_slot_listeners(make_mode, tmp_path) -> None:
    mode = make_mode("reuseport")
    mode.bind([parse_address(f"unix:{tmp_path}/s")], 2)
    assert mode.sockets.slots == {}
    assert mode.worker_sockets(1) == mode.sockets.shared


def test_resize_adds_the_next_slot_and_close_slot_removes_it(make_mode) -> None:
    mode = make_mode("reuseport")
    mode.bind([parse_address("127.0.0.1:0")], 2)
    assert mode.resize(3) is False
    assert set(mode.sockets.slots) == {0, 1, 2}
    assert mode.sockets.slots[2][0].getsockname() == mode.sockets.slots[0][0].getsockname()
    mode.resize(2)  # steering only: the slot stays until its worker has drained
    assert set(mode.sockets.slots) == {0, 1, 2}
    mode.close_slot(2)
    assert set(mode.sockets.slots) == {0, 1}


def test_systemd_sockets_turn_it_into_shared(make_mode) -> None:
    mode = make_mode("reuseport")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    fd = sock.detach()
    new = mode.adopt_systemd([fd], 2)
    assert isinstance(new, SharedMode) and mode.cfg.dispatch == "shared"
    assert [s.fileno() for s in new.sockets.shared] == [fd]
    for s in new.sockets.all():
        s.close()


def test_an_address_another_servers_group_holds_is_refused_untouched(make_mode) -> None:
    """SO_REUSEPORT would let the bind succeed next to another server's listener (same user,
    option set): the mode must refuse it instead of joining that group and re-steering it."""
    other = listen(parse_address("127.0.0.1:0"), reuseport=True)
    try:
        port = other.getsockname()[1]
        mode = make_mode("reuseport", bind=[f"127.0.0.1:{port}"])
        with pytest.raises(BindError) as info:
            mode.bind([parse_address(f"127.0.0.1:{port}")], 2)
        assert str(info.value) == f"address 127.0.0.1:{port} is already in use (--bind)"
        assert mode.sockets.slots == {}, "nothing joined the other group"
    finally:
        other.close()


def test_a_taken_default_bind_says_it_is_the_default(make_mode) -> None:
    mode = make_mode("reuseport")
    mode.cfg.set("bind", ["127.0.0.1:8000"], "test")  # the default: what the error names
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(BindError) as info:
            mode.bind([parse_address(f"127.0.0.1:{port}")], 1)
    assert str(info.value) == f"address 127.0.0.1:{port} is already in use (--bind, default 127.0.0.1:8000)"


def test_a_reload_under_systemd_keeps_the_shared_sockets_without_a_warning(
    make_mode, caplog: pytest.LogCaptureFixture
) -> None:
    from prefork_lb.config import build

    mode = make_mode("reuseport")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        shared = mode.adopt_systemd([os.dup(s.fileno())], 1)
    try:
        new = build({"dispatch": "reuseport"}, environ={}, app_uri="x:app")
        with caplog.at_level(logging.WARNING, logger="prefork_lb.error"):
            shared.reconfigure(new)
        assert new.dispatch == "shared" and shared.cfg is new
        assert "needs a restart" not in caplog.text
    finally:
        for sock in shared.sockets.all():
            sock.close()
