"""The multi-host rig: prefork_lb servers in network namespaces, standalone proxies in front.

Used by tests/integration/test_multihost.py and bench/multihost.py (which records the numbers
the test never asserts on).

* :func:`rig`: ``n`` hosts (tests.netns.namespaces), one Redis in the root namespace bound to
  the hosts' gateway addresses (so every host reaches it over its own link), and on each host
  ``python -m prefork_lb tests.apps_multihost:app`` (``ip netns exec``, started with
  tests.helpers.spawn). Everything is stopped and deleted at the end, whatever happens.
* :meth:`Rig.proxy`: a standalone proxy on 127.0.0.1 with the hosts as backends and
  :data:`CUT_FLAGS`, the settings that keep a cut host from failing a GET.
* :func:`open_loop`: a fixed-rate generator (a new connection per request, latency measured
  from the request's scheduled time), each request's status, backend and latency recorded.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port, server_env, spawn, stop_process, wait_for
from tests.integration.proxy.driver import ProxyProcess, http_request
from tests.netns import Host, namespaces
from tests.stores import StoreProcess

PORT = 8000  # every host listens on its own address, port 8000

# Health checks every 0.2 s, down after 2 failures, up after 2 passes; a connect to a cut host
# fails at once (the rig's unreachable route) and ejects it; a GET whose host went silent
# mid-request is tried elsewhere after --upstream-timeout (--retry-on-timeout); the budget
# lets every request of the cut's first second be retried.
INTERVAL, FALL, RISE = 0.2, 2, 2
CUT_FLAGS = (
    "--health-check-path", "/health",
    "--health-check-interval", str(INTERVAL),
    "--health-check-timeout", "0.5",
    "--health-check-fall", str(FALL),
    "--health-check-rise", str(RISE),
    "--retries", "2",
    "--retry-budget", "1",
    "--upstream-connect-timeout", "0.5",
    "--upstream-timeout", "1",
    "--retry-on-timeout", "true",
)  # fmt: skip


class NetnsRedis(StoreProcess):
    """redis-server in the root namespace, bound to the hosts' gateway addresses only."""

    def __init__(self, workdir: Path, binds: list[str]) -> None:
        super().__init__("redis", workdir)
        self.binds = binds

    def command(self) -> list[str]:
        # Protected mode would refuse every peer that is not loopback; these addresses are
        # reachable from the rig's own namespaces only.
        binds = ("--bind", *self.binds, "--port", str(self.port), "--protected-mode", "no")
        return [self.binary, *binds, "--save", "", "--appendonly", "no"]

    def url_for(self, host: Host) -> str:
        return f"redis://{host.gateway}:{self.port}"

    def answers(self) -> bool:
        import socket

        try:
            with socket.create_connection((self.binds[0], self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@dataclass
class Rig:
    hosts: list[Host]
    workdir: Path
    stack: ExitStack
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def backend(self, host: Host) -> str:
        return f"{host.addr}:{PORT}"

    def host_of(self, backend: str | None) -> Host | None:
        return next((h for h in self.hosts if self.backend(h) == backend), None)

    def proxy(self, *flags: str) -> ProxyProcess:
        backends = ",".join(self.backend(h) for h in self.hosts)
        workdir = self.workdir / f"proxy{free_port()}"
        workdir.mkdir()
        p = ProxyProcess(workdir, ["proxy", "--backends", backends, *CUT_FLAGS, *flags])
        self.stack.callback(p.stop)
        p.start(timeout=30.0)
        p.wait_healthy(len(self.hosts), timeout=30.0)
        return p


def _serve(host: Host, redis: NetnsRedis, workdir: Path) -> subprocess.Popen[bytes]:
    cmd = host.exec(
        [
            sys.executable,
            "-m",
            "prefork_lb",
            "tests.apps_multihost:app",
            "-b",
            f"{host.addr}:{PORT}",
            "-w",
            "1",
        ]
    )
    env = server_env(
        {
            "PREFORK_LB_TEST_HOST": host.ns,
            "PREFORK_LB_TEST_SESSION_STORE": redis.url_for(host),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        }
    )
    with open(workdir / f"{host.ns}.log", "wb") as log:
        return spawn(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def _answers(host: Host) -> bool:
    res = subprocess.run(
        host.exec([sys.executable, "-c", _PROBE, host.addr, str(PORT)]), capture_output=True, timeout=20
    )
    return res.returncode == 0


# A GET /health from inside the namespace (the root namespace reaches it too, but this also
# shows the server bound the host's own address).
_PROBE = (
    "import sys,http.client as h;c=h.HTTPConnection(sys.argv[1],int(sys.argv[2]),timeout=2);"
    "c.request('GET','/health');sys.exit(c.getresponse().status!=200)"
)


@contextmanager
def rig(workdir: Path, n: int = 3) -> Iterator[Rig]:
    with ExitStack() as stack:
        hosts = stack.enter_context(namespaces(n))
        redis = NetnsRedis(workdir, [h.gateway for h in hosts])
        stack.callback(redis.stop)
        redis.start()
        r = Rig(hosts, workdir, stack)
        for h in hosts:
            proc = _serve(h, redis, workdir)
            r.servers.append(proc)
            stack.callback(stop_process, proc)
        for h, proc in zip(hosts, r.servers, strict=True):
            wait_for(
                lambda h=h, proc=proc: proc.poll() is not None or _answers(h),  # type: ignore[misc]
                30.0,
                f"the server in {h.ns}",
                interval=0.1,
            )
            assert proc.poll() is None, (workdir / f"{h.ns}.log").read_text()
        yield r


# -- open-loop load -------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # when it was scheduled (time.monotonic())
    status: int  # 0: no response (the error is in ``error``)
    latency: float  # from ``at`` to the whole response
    backend: str | None
    error: str = ""


async def _read_to_end(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    data = b""
    while chunk := await loop.sock_recv(sock, 65536):
        data += chunk
    return data


async def _one(port: int, path: str, at: float, timeout: float) -> Sample:
    # A socket of our own, closed here whatever happens: a connection asyncio's streams left
    # to the loop to close could be collected unclosed (a ResourceWarning, an error here).
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), timeout)
        await loop.sock_sendall(
            sock, f"GET {path} HTTP/1.1\r\nHost: rig\r\nConnection: close\r\n\r\n".encode()
        )
        data = await asyncio.wait_for(_read_to_end(loop, sock), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return Sample(at, 0, time.monotonic() - at, None, repr(exc))
    finally:
        sock.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split()[1])
    except (IndexError, ValueError):
        return Sample(at, 0, time.monotonic() - at, None, f"bad response {data[:40]!r}")
    backend = next(
        (v.strip() for k, _, v in (h.partition(":") for h in head[1:]) if k.lower() == "x-backend-server"),
        None,
    )
    return Sample(at, status, time.monotonic() - at, backend)


async def _run(port: int, rate: float, count: int, path: str, timeout: float, out: list[Sample]) -> None:
    tasks = []
    start = time.monotonic() + 0.05
    for i in range(count):
        at = start + i / rate
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(port, path, at, timeout)))
    out.extend(await asyncio.gather(*tasks))


class OpenLoop:
    """``count`` GETs at ``rate`` a second in a thread of their own; :meth:`done` waits for all."""

    def __init__(self, port: int, rate: float, count: int, path: str = "/", timeout: float = 10.0) -> None:
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self.rate = rate
        self.thread = threading.Thread(
            target=asyncio.run, args=(_run(port, rate, count, path, timeout, self.samples),), daemon=True
        )
        self.thread.start()

    def sent_about(self) -> int:
        """How many requests were scheduled by now."""
        return int((time.monotonic() - self.started) * self.rate)

    def done(self, timeout: float) -> list[Sample]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the load did not finish in {timeout} s"
        return sorted(self.samples, key=lambda s: s.at)


def served_by(port: int, backend: str, tries: int = 60) -> bool:
    """Some GET through the proxy on ``port`` lands on ``backend`` (least_connections spreads
    sequential requests over every backend that is up)."""
    return any(http_request(port, timeout=5.0).header("X-Backend-Server") == backend for _ in range(tries))
