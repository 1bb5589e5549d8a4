"""WebSockets through the proxy, and TLS termination (trustme certificates). See
tests/integration/proxy/driver.py for the processes and clients; conftest.py for the fixtures.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import HOST, wait_for
from tests.integration.proxy.backends import ws_accept, ws_frame, ws_read_frame
from tests.integration.proxy.driver import connect, forwarded_elements
from tests.server import HTTPStream, build_request, exchange

WS_KEY = base64.b64encode(b"0123456789abcdef").decode()


WS_HANDSHAKE = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", WS_KEY),
    ("Sec-WebSocket-Version", "13"),
]


def test_websocket_echo_through_the_proxy(start_proxy, backends) -> None:
    b = backends(1, websocket=True)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with connect(p.port) as sock:
        sock.sendall(build_request("GET", "/ws", WS_HANDSHAKE))
        stream = HTTPStream(sock)
        r = stream.read_response()
        assert r.status == 101, r
        assert r.header("sec-websocket-accept") == ws_accept(WS_KEY)
        assert (r.header("upgrade") or "").lower() == "websocket"
        assert "upgrade" in (r.header("connection") or "").lower()
        buf = bytearray(stream.buf)

        def read_exactly(n: int) -> bytes:
            while len(buf) < n:
                data = sock.recv(65536)
                assert data, "tunnel closed"
                buf.extend(data)
            out = bytes(buf[:n])
            del buf[:n]
            return out

        for text in (b"hello", b"x" * 70000):
            sock.sendall(ws_frame(text, 1, mask=os.urandom(4)))
            opcode, masked, payload = ws_read_frame(read_exactly)
            assert (opcode, masked, payload) == (1, False, text)
        sock.sendall(ws_frame(b"\x03\xe8", 8, mask=os.urandom(4)))
        assert ws_read_frame(read_exactly)[0] == 8
    seen = b.seen()[-1]
    assert (seen.header("upgrade") or "").lower() == "websocket"
    assert "upgrade" in (seen.header("connection") or "").lower()
    wait_for(lambda: p.stats()["websockets"] == 1, 3, "one websocket in /lb-stats")


def test_upgrade_refused_by_backend_is_a_plain_response(start_proxy, backends) -> None:
    b = backends(1, websocket=False)[0]
    p = start_proxy([b], "--health-check-interval", "0")
    with connect(p.port) as sock:
        sock.sendall(build_request("GET", "/ws", WS_HANDSHAKE))
        stream = HTTPStream(sock)
        r = stream.read_response()
        assert r.status == 200 and r.body == b"b0", r
        # No tunnel: what follows is HTTP again (or the proxy closes), never passed raw.
        sock.sendall(build_request("GET", "/after"))
        if not stream.wait_bytes(b"\r\n\r\n", 3):
            assert stream.eof, "neither a response nor a close"
        else:
            r2 = stream.read_response()
            assert r2.status == 200 and r2.header("x-request-target") == "/after", r2
    assert p.stats()["websockets"] == 0


# -- TLS -----------------------------------------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Any, Path, Path]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return ca, certfile, keyfile


def test_tls_termination(start_proxy, backends, tls_files) -> None:
    ca, certfile, keyfile = tls_files
    b = backends(1)[0]
    p = start_proxy(
        [b], "--health-check-interval", "0", "--certfile", str(certfile), "--keyfile", str(keyfile)
    )
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((HOST, p.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            stream = HTTPStream(tls)
            for _ in range(2):  # keep-alive over TLS
                tls.sendall(build_request("GET", "/secure"))
                r = stream.read_response()
                assert r.status == 200 and r.body == b"b0", r
    seen = b.seen()[-1]
    assert seen.header("x-forwarded-proto") == "https"
    assert forwarded_elements(seen.header("forwarded") or "")[-1]["proto"] == "https"


def test_app_behind_the_tls_terminating_proxy_sees_https(start_proxy, tls_files) -> None:
    """--dispatch proxy --certfile: the workers believe their proxy's X-Forwarded-Proto, so
    the app builds https URLs. The client here is not in --forwarded-allow-ips: its own claim
    is replaced by what the proxy terminated, and the workers still trust the proxy."""
    ca, certfile, keyfile = tls_files
    p = start_proxy(
        None,
        "--dispatch",
        "proxy",
        "--workers",
        "1",
        "--certfile",
        str(certfile),
        "--keyfile",
        str(keyfile),
        "--forwarded-allow-ips",
        "10.9.9.9",
        app="tests.apps:scheme",
    )
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with socket.create_connection((HOST, p.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            stream = HTTPStream(tls)
            for headers in ([], [("X-Forwarded-Proto", "http")], []):
                tls.sendall(build_request("GET", "/", headers))
                r = stream.read_response()
                assert (r.status, r.body) == (200, b"https"), r


def test_tls_1_1_is_refused(start_proxy, backends, tls_files) -> None:
    ca, certfile, keyfile = tls_files
    b = backends(1)[0]
    p = start_proxy(
        [b], "--health-check-interval", "0", "--certfile", str(certfile), "--keyfile", str(keyfile)
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # SECLEVEL=0 so that our own OpenSSL does offer TLS 1.1: the refusal must come from the proxy
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection((HOST, p.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError) as info:
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    assert "no protocols available" not in str(info.value), "the client could not offer TLS 1.1 here"
    assert b.seen() == []


def test_plain_http_to_a_tls_port_reaches_no_backend(start_proxy, backends, tls_files) -> None:
    _, certfile, keyfile = tls_files
    b = backends(1)[0]
    p = start_proxy(
        [b], "--health-check-interval", "0", "--certfile", str(certfile), "--keyfile", str(keyfile)
    )
    got = exchange(p.port, build_request(), timeout=3)
    assert got.closed and not got.startswith(b"HTTP/1.1 200"), got
    assert b.seen() == []


def test_tls_large_bodies_both_ways(start_proxy, backends, tls_files) -> None:
    ca, certfile, keyfile = tls_files
    b = backends(1)[0]
    p = start_proxy(
        [b], "--health-check-interval", "0", "--certfile", str(certfile), "--keyfile", str(keyfile)
    )
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    body = os.urandom(3 * 1024 * 1024)
    with socket.create_connection((HOST, p.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            stream = HTTPStream(tls, 10)
            tls.sendall(build_request("PUT", "/sha", body=body))
            r = stream.read_response()
            assert r.status == 200 and r.body.decode() == hashlib.sha256(body).hexdigest(), r
            tls.sendall(build_request("GET", "/big?bytes=5000000"))
            r = stream.read_response()
            assert r.status == 200 and len(r.body) == 5_000_000 and r.complete, r.headers
