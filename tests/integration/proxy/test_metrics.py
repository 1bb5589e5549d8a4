"""The proxy's upstream pools and WebSockets on /metrics, with real processes: a WebSocket opened
through the proxy with a raw socket upgrade shows as one open tunnel and one active upstream
connection at its backend while it lasts, and as one more upgrade in the total."""

from __future__ import annotations

import os

from tests.helpers import wait_for
from tests.integration.proxy.backends import ws_frame
from tests.integration.proxy.driver import connect
from tests.integration.proxy.test_websockets_tls import WS_HANDSHAKE
from tests.integration.test_admin import scrape, total
from tests.server import HTTPStream, build_request


def test_an_open_websocket_is_a_gauge_and_an_upgrade(start_proxy, backends) -> None:
    b = backends(1, websocket=True)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    before = scrape(p.admin_port)
    name = {"backend": b.addr}
    assert total(before, "prefork_lb_backend_websockets_open", **name) == 0
    with connect(p.port) as sock:
        sock.sendall(build_request("GET", "/ws", WS_HANDSHAKE))
        stream = HTTPStream(sock)
        assert stream.read_response().status == 101
        m = scrape(p.admin_port)
        assert total(m, "prefork_lb_backend_websockets_open", **name) == 1
        assert total(m, "prefork_lb_backend_active_connections", **name) == 1
        assert total(m, "prefork_lb_backend_idle_connections", **name) == 0
        assert (
            total(m, "prefork_lb_proxy_websockets_total") - total(before, "prefork_lb_proxy_websockets_total")
            == 1
        )
        assert total(m, "prefork_lb_backend_websockets_total", **name) == 1
        sock.sendall(ws_frame(b"\x03\xe8", 8, mask=os.urandom(4)))  # close; the backend answers and closes
        assert stream.read_to_close(20)[:1] == b"\x88"  # its close frame, then the end
    wait_for(
        lambda: total(scrape(p.admin_port), "prefork_lb_backend_websockets_open", **name) == 0,
        20,
        "the tunnel closed at the proxy",
    )
    m = scrape(p.admin_port)
    assert total(m, "prefork_lb_backend_active_connections", **name) == 0
    assert (
        total(m, "prefork_lb_proxy_websockets_total") - total(before, "prefork_lb_proxy_websockets_total")
        == 1
    )


def test_keep_alive_connections_are_idle_between_requests_and_active_during_one(
    start_proxy, backends
) -> None:
    b = backends(1)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    name = {"backend": b.addr}
    n = 3
    for _ in range(n):
        with connect(p.port) as sock:
            sock.sendall(build_request("GET", "/"))
            assert HTTPStream(sock).read_response().status == 200
    m = scrape(p.admin_port)
    assert total(m, "prefork_lb_backend_active_connections", **name) == 0
    assert total(m, "prefork_lb_backend_idle_connections", **name) == 1  # one connection, reused
    assert total(m, "prefork_lb_backend_requests_total", **name) == n


def test_a_backend_that_refuses_connections_counts_one_ejection(start_proxy, backends) -> None:
    from tests.helpers import free_port, http_get

    b = backends(1)[0]
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: the connect is refused
    p = start_proxy([b, dead], "--health-check-interval", "0", "--strategy", "round_robin")
    before = scrape(p.admin_port)
    assert total(before, "prefork_lb_backend_ejections_total", backend=dead) == 0
    # Round robin sends one of the first two requests to the dead backend: refused, ejected,
    # and the GET is retried on the live one, so both answer 200.
    assert [http_get(p.port, "/")[0] for _ in range(4)] == [200] * 4
    m = scrape(p.admin_port)
    assert total(m, "prefork_lb_backend_ejections_total", backend=dead) == 1
    assert total(m, "prefork_lb_backend_ejections_total", backend=b.addr) == 0
