"""The short --help and the unknown-flag check (prefork_lb.usage), as pure functions."""

from __future__ import annotations

import pytest

from prefork_lb import usage
from prefork_lb.config import SETTINGS
from prefork_lb.settings.base import PROXY, SERVER

SERVER_FLAGS = usage.flags_of(SETTINGS, SERVER)
PROXY_FLAGS = usage.flags_of(SETTINGS, PROXY)


@pytest.mark.parametrize(
    ("argv", "unknown"),
    [
        (["app", "-w", "2"], None),
        (["app", "-w2", "--bind=127.0.0.1:1"], None),
        (["app", "--work", "2"], None),  # argparse's abbreviation
        (["app", "--error-logfile", "-", "--backlog", "-1"], None),  # values, not flags
        (["app", "--access-logformat", "-%(h)s %(r)s"], None),
        (["app", "--", "--wrokers"], None),
        (["--wrokers", "2", "app"], "--wrokers"),
        (["app", "--wrokers=2"], "--wrokers"),
        (["app", "-x"], "-x"),
    ],
)
def test_unknown_flag_reads_argv_as_argparse_does(argv: list[str], unknown: str | None) -> None:
    assert usage.unknown_flag(argv, SERVER_FLAGS) == unknown


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("--wrokers", "--workers"), ("--keepalive", "--keep-alive"), ("--stat-bind", "--stats-bind")],
)
def test_closest_flag(typed: str, meant: str) -> None:
    assert usage.closest(typed, SERVER_FLAGS) == meant


def test_no_suggestion_for_a_flag_like_none() -> None:
    assert usage.closest("--no-such-flag", SERVER_FLAGS) is None


def test_the_proxy_has_no_worker_flags_but_knows_whose_they_are() -> None:
    assert usage.unknown_flag(["-w", "4"], PROXY_FLAGS) == "-w"
    workers = usage.setting_for("-w", SETTINGS)
    assert workers is not None and workers.name == "workers" and not workers.applies_to(PROXY)
    assert usage.unknown_flag(["--backends", "a:1", "--retries", "1"], PROXY_FLAGS) is None


@pytest.mark.parametrize("command", [SERVER, PROXY])
def test_short_help_shows_each_common_flag_of_the_command_with_its_default(command: str) -> None:
    text = usage.short_help(SETTINGS, command)
    assert all(len(line) <= usage.WIDTH for line in text.splitlines())
    for s in SETTINGS:
        if s.common and s.applies_to(command):
            assert s.flags[-1] in text and f"(default: {s.default_text()})" in " ".join(text.split())
    flags = usage.flags_of(SETTINGS, command)
    for word in text.split():
        if word.startswith("--") and word.rstrip(",.)") not in flags:
            pytest.fail(f"{word} is no flag of {command}")


def test_short_help_says_wsgi_and_asgi_and_shows_the_mount_form() -> None:
    text = usage.short_help(SETTINGS, SERVER)
    assert "WSGI and ASGI server" in text and "WSGI server and load balancer" not in text
    assert "       prefork_lb --mount ROUTE=MODULE:APP [--mount ...] [options]" in text.splitlines()
    for flag in ("--interface", "--lifespan", "--mount"):
        assert f"\n  {flag} " in text, flag


def test_help_all_says_wsgi_or_asgi() -> None:
    from prefork_lb.cli import make_parser

    text = make_parser(SERVER).format_help()
    assert "WSGI and ASGI server" in text and "the WSGI or ASGI app, as MODULE:ATTRIBUTE" in " ".join(
        text.split()
    )
    assert "prefork_lb --mount ROUTE=MODULE:APP" in text
