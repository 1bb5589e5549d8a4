"""--dispatch shared: one listener per address, given to every worker; no helper."""

from __future__ import annotations

from prefork_lb.sockets import parse_address
from tests.unit.dispatch.conftest import FakeServer


def test_binds_one_shared_listener_and_no_slot_sockets(make_mode) -> None:
    mode = make_mode("shared")
    mode.bind([parse_address("127.0.0.1:0")], 2)
    (sock,) = mode.sockets.shared
    assert mode.sockets.slots == {} and mode.sockets.channels == {}
    assert mode.worker_sockets(0) == mode.worker_sockets(1) == [sock]
    assert mode.shared_accept
    assert mode.helper_role is None and mode.helper_sockets() == []
    assert mode.resize(3) is False and mode.slot_port(0) == 0


def test_attach_adds_listeners(make_mode) -> None:
    mode = make_mode("shared")
    server = FakeServer()
    mode.attach(server, ["a", "b"])
    assert server.listeners == ["a", "b"] and not server.channels


def test_handover_names_every_descriptor(make_mode) -> None:
    mode = make_mode("shared")
    mode.bind([parse_address("127.0.0.1:0")], 1)
    spec = mode.handover()
    assert spec == {"shared": [mode.sockets.shared[0].fileno()], "slots": {}, "admin": [], "control": []}


def test_adopt_takes_the_handed_down_descriptors(make_mode) -> None:
    old = make_mode("shared")
    old.bind([parse_address("127.0.0.1:0")], 1)
    port = old.sockets.shared[0].getsockname()[1]
    new = make_mode("shared")
    new.adopt(old.handover(), [parse_address(f"127.0.0.1:{port}")], 1)
    assert [s.fileno() for s in new.sockets.shared] == [s.fileno() for s in old.sockets.shared]
    old.sockets.shared.pop().detach()  # the same descriptor now: closed once, by the new mode


def test_ready_message_counts_workers(make_mode) -> None:
    mode = make_mode("shared")
    assert mode.ready_message(1) == "Ready: 1 worker serving"
    assert mode.ready_message(3) == "Ready: 3 workers serving"
