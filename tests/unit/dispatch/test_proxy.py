"""--dispatch proxy: public listeners for the proxy, a loopback port per worker slot."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from prefork_lb import scoreboard as sb
from prefork_lb.child import ChildContext
from prefork_lb.proxy.process import ProxyChild
from prefork_lb.sockets import BindError, parse_address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_slots_listen_on_loopback_and_the_proxy_gets_the_public_listener(make_mode) -> None:
    mode = make_mode("proxy", stats_bind="off")
    mode.bind([parse_address("127.0.0.1:0")], 2)
    (public,) = mode.sockets.shared
    assert set(mode.sockets.slots) == {0, 1} and mode.sockets.admin == []
    (s0,), (s1,) = mode.sockets.slots[0], mode.sockets.slots[1]
    assert s0.getsockname()[0] == "127.0.0.1" and s0.getsockname() != s1.getsockname()
    assert mode.worker_sockets(1) == [s1]
    assert mode.slot_port(1) == s1.getsockname()[1]
    assert mode.helper_role == "proxy" and mode.helper_sockets() == [public]


def test_worker_base_port_numbers_the_slots(make_mode) -> None:
    base = free_port()
    mode = make_mode("proxy", stats_bind="off", worker_base_port=base, workers=1)
    mode.bind([parse_address("127.0.0.1:0")], 1)
    assert mode.slot_port(0) == base


def test_admin_listener_goes_to_the_admin_process_and_to_the_next_master(make_mode) -> None:
    """Issue 13: the admin process serves --stats-bind; the proxy answers it over a private
    channel (one end each), which is per master and never handed over."""
    mode = make_mode("proxy", stats_bind=f"127.0.0.1:{free_port()}")
    mode.bind([parse_address("127.0.0.1:0")], 1)
    (admin,) = mode.sockets.admin
    proxy_end, admin_end = mode.links()
    assert mode.helper_sockets() == [*mode.sockets.shared, proxy_end]
    assert mode.admin_sockets() == [admin, admin_end]
    assert mode.handover()["admin"] == [admin.fileno()]
    handed = mode.handover()
    assert not {proxy_end.fileno(), admin_end.fileno()} & {fd for fds in handed.values() for fd in fds}


def test_resize_adds_a_slot_port_and_never_replaces_the_proxy(make_mode) -> None:
    mode = make_mode("proxy", stats_bind="off")
    mode.bind([parse_address("127.0.0.1:0")], 2)
    assert mode.resize(3) is False and set(mode.sockets.slots) == {0, 1, 2}


def test_worker_options_and_messages(make_mode) -> None:
    mode = make_mode("proxy", stats_bind="off", backends=["10.0.0.1:80"])
    options = SimpleNamespace(idle_grace=0.0)
    mode.configure_worker(options)
    assert options.idle_grace > 0
    assert mode.ready_message(0) == "Ready: proxy to 10.0.0.1:80"
    assert mode.ready_message(2) == "Ready: 2 workers serving"


def test_one_sticky_secret_per_master(make_mode) -> None:
    assert make_mode("proxy", sticky_secret="s").sticky_secret == b"s"
    assert make_mode("proxy").sticky_secret != make_mode("proxy").sticky_secret


def test_the_helper_is_the_proxy_child(make_mode) -> None:
    mode = make_mode("proxy", stats_bind="off")
    mode.bind([parse_address("127.0.0.1:0")], 1)
    board = sb.Scoreboard(4)
    ctx = ChildContext(-1, mode.cfg, board, board.allocate(0, -1), 1, -1, mode.helper_sockets(), mode)
    child = mode.helper_process(ctx)
    assert isinstance(child, ProxyChild)
    assert child.listeners == mode.sockets.shared and child.secret == mode.sticky_secret


def test_a_taken_stats_bind_names_the_setting(make_mode) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        mode = make_mode("proxy", stats_bind=f"127.0.0.1:{port}")
        with pytest.raises(BindError) as info:
            mode.bind([parse_address("127.0.0.1:0")], 1)
    assert str(info.value) == f"address 127.0.0.1:{port} is already in use (--stats-bind)"


def test_a_taken_worker_port_names_the_setting(make_mode) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        mode = make_mode("proxy", stats_bind="off", worker_base_port=port)
        with pytest.raises(BindError) as info:
            mode.bind([parse_address("127.0.0.1:0")], 1)
    assert (
        str(info.value) == f"address 127.0.0.1:{port} is already in use (--worker-base-port {port} + slot 0)"
    )


def test_the_default_stats_bind_is_named_as_the_default() -> None:
    from prefork_lb.config import defaults
    from prefork_lb.settings.base import flag_and_default

    cfg = defaults()
    assert flag_and_default(cfg, "stats_bind") == "--stats-bind, default 127.0.0.1:9000"
    assert flag_and_default(cfg, "bind") == "--bind, default 127.0.0.1:8000"
    cfg.set("stats_bind", "127.0.0.1:9001", "test")
    assert flag_and_default(cfg, "stats_bind") == "--stats-bind"


def test_workers_believe_their_proxy_whatever_forwarded_allow_ips_lists(make_mode) -> None:
    """The proxy applied --forwarded-allow-ips to its clients; its workers' one peer is the
    proxy itself, on loopback, and its X-Forwarded-Proto is what sets wsgi.url_scheme."""
    mode = make_mode("proxy", stats_bind="off", forwarded_allow_ips="10.9.9.9")
    options = SimpleNamespace(idle_grace=0.0, trusted_peers=None)
    mode.configure_worker(options)
    assert "127.0.0.1" in options.trusted_peers
    assert "10.9.9.9" not in options.trusted_peers


def test_stats_bind_public_is_for_the_proxy_only(make_mode) -> None:
    """Issue 13: without a proxy nothing could answer on the public port: one clear line."""
    public = make_mode("proxy", stats_bind="public")
    public.bind([parse_address("127.0.0.1:0")], 1)
    assert public.sockets.admin == [] and public.admin_sockets() == []
    shared = make_mode("shared", stats_bind="public")
    with pytest.raises(BindError) as info:
        shared.bind([parse_address("127.0.0.1:0")], 1)
    assert str(info.value) == "--stats-bind public needs --dispatch proxy (this is --dispatch shared)"
