"""Issue 13: every dispatch mode binds the --stats-bind admin listener, for the admin process."""

from __future__ import annotations

import logging
import socket

import pytest

from prefork_lb.dispatch import DISPATCH_MODES
from prefork_lb.sockets import BindError, parse_address


@pytest.mark.parametrize("mode", DISPATCH_MODES)
def test_every_mode_binds_the_admin_listener_for_the_admin_process(make_mode, mode: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = make_mode(mode, stats_bind=f"127.0.0.1:{port}")
    m.bind([parse_address("127.0.0.1:0")], 2)
    (admin,) = m.sockets.admin
    assert admin.getsockname() == ("127.0.0.1", port)
    assert m.admin_sockets()[0] is admin
    assert admin not in m.worker_sockets(0) and admin not in m.helper_sockets()
    assert m.handover()["admin"] == [admin.fileno()]


def test_the_default_address_taken_is_a_warning(make_mode, caplog: pytest.LogCaptureFixture) -> None:
    holder = socket.socket()
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 9000))
        holder.listen(1)
    except OSError:
        pass  # something else on this machine holds it already: the same case
    try:
        m = make_mode("shared", stats_bind="127.0.0.1:9000")  # the default value
        with caplog.at_level(logging.WARNING, logger="prefork_lb.error"):
            m.bind([parse_address("127.0.0.1:0")], 1)
    finally:
        holder.close()
    assert m.sockets.admin == []
    assert (
        "No admin listener: address 127.0.0.1:9000 is already in use (--stats-bind, default 127.0.0.1:9000)"
        in caplog.text
    )


def test_an_explicit_address_taken_fails(make_mode) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        m = make_mode("reuseport", stats_bind=f"127.0.0.1:{port}")
        with pytest.raises(BindError, match="already in use"):
            m.bind([parse_address("127.0.0.1:0")], 1)
