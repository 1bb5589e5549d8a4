"""--control-socket: every dispatch mode binds it (0600) for the admin process, which then runs
even with --stats-bind off; a stale socket is replaced, a live one refused or (the default path)
a warning."""

from __future__ import annotations

import logging
import os
import socket
import stat
from pathlib import Path

import pytest

from prefork_lb.dispatch import DISPATCH_MODES
from prefork_lb.sockets import BindError, parse_address


@pytest.mark.parametrize("mode", DISPATCH_MODES)
def test_every_mode_binds_a_private_control_socket(make_mode, mode: str, tmp_path: Path) -> None:
    path = tmp_path / "c.ctl"
    m = make_mode(mode, control_socket=str(path))
    m.bind([parse_address("127.0.0.1:0")], 2)
    (ctl,) = m.sockets.control
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert m.has_admin() and m.sockets.admin == []
    assert ctl in m.admin_sockets() and ctl not in m.worker_sockets(0) and ctl not in m.helper_sockets()
    assert m.handover()["control"] == [ctl.fileno()]


def test_off_binds_nothing_and_starts_no_admin_process(make_mode) -> None:
    m = make_mode("shared", control_socket="off")
    m.bind([parse_address("127.0.0.1:0")], 1)
    assert m.sockets.control == [] and not m.has_admin()


def test_the_default_path_is_next_to_the_pid_file(make_mode, tmp_path: Path) -> None:
    m = make_mode("shared", control_socket=None, pidfile=str(tmp_path / "app.pid"))
    m.bind([parse_address("127.0.0.1:0")], 1)
    assert m.sockets.control[0].getsockname() == str(tmp_path / "app.ctl")


def test_a_stale_socket_is_replaced(make_mode, tmp_path: Path) -> None:
    path = tmp_path / "c.ctl"
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(path))  # bound, never listening: what a killed server leaves
    m = make_mode("shared", control_socket=str(path))
    m.bind([parse_address("127.0.0.1:0")], 1)
    assert len(m.sockets.control) == 1


def test_a_live_socket_given_explicitly_fails(make_mode, tmp_path: Path) -> None:
    path = tmp_path / "c.ctl"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen(1)
        m = make_mode("shared", control_socket=str(path))
        with pytest.raises(BindError, match="--control-socket: unix:.* is in use"):
            m.bind([parse_address("127.0.0.1:0")], 1)


def test_the_default_path_taken_is_a_warning(
    make_mode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(tmp_path / "app.ctl"))
        live.listen(1)
        m = make_mode("shared", control_socket=None, pidfile=str(tmp_path / "app.pid"))
        with caplog.at_level(logging.WARNING, logger="prefork_lb.error"):
            m.bind([parse_address("127.0.0.1:0")], 1)
    assert m.sockets.control == [] and "No control socket" in caplog.text


def test_a_file_that_is_not_a_socket_is_left_alone(make_mode, tmp_path: Path) -> None:
    path = tmp_path / "c.ctl"
    path.write_text("keep me")
    m = make_mode("shared", control_socket=str(path))
    with pytest.raises(BindError, match="not a socket"):
        m.bind([parse_address("127.0.0.1:0")], 1)
    assert path.read_text() == "keep me"
