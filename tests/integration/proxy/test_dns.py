"""A backend whose name does not resolve: said at start in one line, the proxy serves the others.

``.invalid`` never resolves (RFC 2606), and the resolver says so at once without the network.
"""

from __future__ import annotations

import pytest

from tests.helpers import wait_for
from tests.integration.proxy.driver import FAST_HEALTH, http_request

NOWHERE = "nosuchhost.invalid:8000"


@pytest.mark.parametrize(
    "checks", [FAST_HEALTH, ("--health-check-interval", "0")], ids=["checks", "no_checks"]
)
def test_an_unresolvable_backend_is_reported_at_start_and_stays_down(
    start_proxy, backends, checks: tuple[str, ...]
) -> None:
    ok = backends(1)[0]
    p = start_proxy([NOWHERE, ok], "--strategy", "round_robin", *checks)
    said = [line for line in p.text().splitlines() if "cannot resolve" in line]
    assert len(said) == 1, p.text()
    assert "[ERROR] proxy: backend nosuchhost.invalid:8000: cannot resolve nosuchhost.invalid: " in said[0]
    assert "looked up again" in said[0]
    wait_for(lambda: p.backend_health(ok.addr) is True, 5, "the resolvable backend up")
    status, health = p.health()
    assert status == 200 and health["status"] == "degraded"
    nowhere = next(b for b in health["backends"] if b["name"] == NOWHERE)
    assert nowhere["healthy"] is False and nowhere["reason"].startswith("DNS: "), nowhere
    for _ in range(6):  # every request goes to the backend that resolves
        r = http_request(p.port)
        assert r.status == 200 and r.header("x-backend-server") == ok.addr
    assert p.proc is not None and p.proc.poll() is None
    assert "Traceback" not in p.text()
