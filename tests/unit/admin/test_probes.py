"""/livez and /readyz decided by pure functions (prefork_lb.admin.probes), and the
--shutdown-delay setting's values."""

from __future__ import annotations

import pytest

from prefork_lb.admin import probes
from prefork_lb.admin.probes import HelperView, http_status, liveness, readiness, ready_slots, stale_after
from prefork_lb.admin.totals import DELAYING, DRAINING, SERVING
from prefork_lb.config import build
from prefork_lb.dispatch.base import HELPER_SLOT
from prefork_lb.settings.base import ConfigError

STALE = 3.0


def proxy(*ages: float, ready: bool = True) -> HelperView:
    return HelperView("proxy", ages, ready)


def test_the_helper_slot_is_the_dispatch_modes() -> None:
    assert probes.HELPER_SLOT == HELPER_SLOT


@pytest.mark.parametrize(("timeout", "stale"), [(0, 10.0), (1, 1.0), (6, 3.0), (30, 10.0), (120, 10.0)])
def test_a_heartbeat_is_stale_before_the_watchdog_acts(timeout: float, stale: float) -> None:
    assert stale_after(timeout) == stale


def test_live_when_the_master_ticks_and_there_is_no_helper() -> None:
    doc = liveness(True, 0.2, None, SERVING, STALE)
    assert http_status(doc) == 200 and doc["reasons"] == [] and doc["status"] == "ok"


def test_not_live_when_the_master_is_gone_or_stuck() -> None:
    gone = liveness(False, 0.1, None, SERVING, STALE)
    assert http_status(gone) == 503 and gone["reasons"] == ["the master process is gone"]
    stuck = liveness(True, 4.0, None, SERVING, STALE)
    assert http_status(stuck) == 503 and "the master's loop last ran 4.0 s ago" in stuck["reasons"][0]


def test_the_helper_must_beat_while_serving() -> None:
    assert http_status(liveness(True, 0.1, proxy(0.1), SERVING, STALE)) == 200
    # two processes in the slot (a replacement): the freshest counts
    assert http_status(liveness(True, 0.1, proxy(9.0, 0.2), SERVING, STALE)) == 200
    stuck = liveness(True, 0.1, proxy(5.0), SERVING, STALE)
    assert http_status(stuck) == 503 and stuck["reasons"] == [
        "the proxy's heartbeat is 5.0 s old (more than 3 s): it is stuck"
    ]
    assert stuck["proxy_heartbeat_age"] == 5.0
    none = liveness(True, 0.1, HelperView("dispatcher", (), False), SERVING, STALE)
    assert http_status(none) == 503 and "no dispatcher process is running" in none["reasons"][0]


@pytest.mark.parametrize("phase", [DELAYING, DRAINING])
def test_while_stopping_the_helper_is_not_required(phase: int) -> None:
    # the master stops the helper first on purpose: that is no reason to restart the server
    assert http_status(liveness(True, 0.1, HelperView("proxy", (), False), phase, STALE)) == 200
    assert http_status(liveness(False, 0.1, HelperView("proxy", (), False), phase, STALE)) == 503


def test_ready_with_one_ready_worker_and_a_ready_helper() -> None:
    doc = readiness(1, None, SERVING, STALE)
    assert http_status(doc) == 200 and doc["phase"] == "serving" and doc["ready_workers"] == 1
    assert http_status(readiness(2, proxy(0.1), SERVING, STALE)) == 200


def test_not_ready_without_workers_or_helper() -> None:
    doc = readiness(0, None, SERVING, STALE)
    assert http_status(doc) == 503 and doc["reasons"] == ["no worker is ready yet"]
    booting = readiness(2, proxy(0.1, ready=False), SERVING, STALE)
    assert http_status(booting) == 503 and booting["reasons"] == ["the proxy is not ready yet"]
    stuck = readiness(2, proxy(7.5), SERVING, STALE)
    assert http_status(stuck) == 503 and "heartbeat is 7.5 s old" in stuck["reasons"][0]


@pytest.mark.parametrize(("phase", "words"), [(DELAYING, "in its --shutdown-delay"), (DRAINING, "draining")])
def test_not_ready_from_the_term_on(phase: int, words: str) -> None:
    doc = readiness(4, proxy(0.1), phase, STALE)
    assert http_status(doc) == 503
    assert doc["reasons"] == [f"shutting down (TERM received; {words})"]


def test_ready_slots_counts_slots_not_processes() -> None:
    # slot 0 has two ready processes (a reload), slot 1 one booting, the helper is not a slot
    assert ready_slots([(0, True), (0, True), (1, False), (-1, True), (-2, True)]) == 1


@pytest.mark.parametrize("value", ["0", "2.5", "3600"])
def test_shutdown_delay_values(value: str) -> None:
    cfg = build({"shutdown_delay": value}, environ={}, app_uri="x:app")
    assert cfg.shutdown_delay == float(value)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("-1", "must be between 0 and 3600 seconds"),
        ("3601", "must be between 0 and 3600 seconds"),
        ("nan", "must be between 0 and 3600 seconds"),
        ("soon", "expected seconds, got 'soon'"),
    ],
)
def test_bad_shutdown_delay_is_one_clear_error(value: str, says: str) -> None:
    with pytest.raises(ConfigError, match="shutdown_delay") as err:
        build({"shutdown_delay": value}, environ={}, app_uri="x:app")
    assert says in str(err.value)
