"""--dispatch handoff: shared listeners for the dispatcher, a channel per slot for the workers."""

from __future__ import annotations

import socket

from prefork_lb import scoreboard as sb
from prefork_lb.child import ChildContext
from prefork_lb.dispatch.dispatcher import DispatcherChild
from prefork_lb.sockets import parse_address
from tests.unit.dispatch.conftest import FakeServer


def test_workers_get_their_channel_and_the_dispatcher_every_sending_end(make_mode) -> None:
    mode = make_mode("handoff")
    mode.bind([parse_address("127.0.0.1:0")], 2)
    (listener,) = mode.sockets.shared
    assert set(mode.sockets.channels) == {0, 1} and mode.sockets.slots == {}
    send0, recv0 = mode.sockets.channels[0]
    send1, _ = mode.sockets.channels[1]
    assert recv0.type == socket.SOCK_SEQPACKET
    assert mode.worker_sockets(0) == [recv0]
    assert mode.helper_role == "dispatcher"
    assert mode.helper_sockets() == [listener, send0, send1]


def test_a_new_slot_gets_a_channel_and_asks_for_a_new_dispatcher(make_mode) -> None:
    mode = make_mode("handoff")
    mode.bind([parse_address("127.0.0.1:0")], 2)
    assert mode.resize(3) is True
    assert set(mode.sockets.channels) == {0, 1, 2}
    assert mode.resize(3) is False
    assert mode.resize(2) is False and set(mode.sockets.channels) == {0, 1, 2}


def test_channels_are_not_handed_to_the_next_master(make_mode) -> None:
    mode = make_mode("handoff")
    mode.bind([parse_address("127.0.0.1:0")], 2)
    spec = mode.handover()
    assert spec["shared"] == [mode.sockets.shared[0].fileno()] and spec["slots"] == {}


def test_attach_adds_handoff_channels(make_mode) -> None:
    mode = make_mode("handoff")
    server = FakeServer()
    mode.attach(server, ["ch"])
    assert server.channels == ["ch"] and not server.listeners


def test_the_helper_is_the_dispatcher_with_the_sending_ends(make_mode) -> None:
    mode = make_mode("handoff")
    mode.bind([parse_address("127.0.0.1:0")], 2)
    board = sb.Scoreboard(4)
    ctx = ChildContext(-1, mode.cfg, board, board.allocate(0, -1), 1, -1, mode.helper_sockets(), mode)
    child = mode.helper_process(ctx)
    assert isinstance(child, DispatcherChild)
    d = child.dispatcher
    assert d.channels == {k: send for k, (send, _) in mode.sockets.channels.items()}
    assert list(d.listeners.values()) == mode.sockets.shared
    child.stop(graceful=True)
    assert d.stopping
