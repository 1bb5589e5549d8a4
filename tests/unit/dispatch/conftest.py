"""Shared by the dispatch mode tests: a config for a mode, and closing what a mode opened."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from prefork_lb import dispatch
from prefork_lb.config import build
from prefork_lb.dispatch.base import DispatchMode


class FakeServer:
    """What a mode's attach() calls on the worker's server."""

    def __init__(self) -> None:
        self.listeners: list[Any] = []
        self.channels: list[Any] = []

    def add_listener(self, sock: Any) -> None:
        self.listeners.append(sock)

    def add_handoff_channel(self, sock: Any) -> None:
        self.channels.append(sock)


@pytest.fixture
def make_mode() -> Iterator[Any]:
    made: list[DispatchMode] = []

    def make(name: str, **settings: Any) -> DispatchMode:
        # No admin listener unless a test asks (every mode binds --stats-bind now, issue 13), and
        # no control socket (its default path is one per user).
        values = {
            "dispatch": name,
            "bind": ["127.0.0.1:0"],
            "workers": 2,
            "stats_bind": "off",
            "control_socket": "off",
            **settings,
        }
        mode = dispatch.make(build(values, environ={}, app_uri="x:app"))
        made.append(mode)
        return mode

    yield make
    for mode in made:
        for s in mode.sockets.all():
            s.close()
