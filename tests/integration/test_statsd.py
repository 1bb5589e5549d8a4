"""StatsD push from the admin process to a UDP socket the test owns: gunicorn's names, exact
request counts, the prefix and DogStatsD tags, and bad flags."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.helpers import HOST, ROOT, free_port, http_get, server_env, wait_for


class Receiver:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.lines.extend(self.sock.recv(65536).decode().split("\n"))
            except TimeoutError:
                return self.lines

    def count(self, name: str) -> int:
        """The sum of the counter ``name``'s values received so far."""
        return sum(
            int(line.split(":", 1)[1].split("|", 1)[0])
            for line in self.drain()
            if line.startswith(name + ":")
        )


@pytest.fixture
def receiver() -> Receiver:
    r = Receiver()
    yield r
    r.sock.close()


def test_requests_are_pushed_with_gunicorns_names(start_server, receiver: Receiver) -> None:
    srv = start_server(
        "tests.apps:hello",
        *("-w", "2", "--stats-bind", f"{HOST}:{free_port()}"),
        *("--statsd-host", f"{HOST}:{receiver.port}", "--statsd-interval", "0.2"),
        *("--statsd-prefix", "svc.web", "--dogstatsd-tags", "env:test"),
    )
    for _ in range(25):
        assert http_get(srv.port, "/")[0] == 200
    wait_for(lambda: receiver.count("svc.web.gunicorn.requests") >= 25, 10, "25 requests pushed")
    lines = receiver.drain()
    assert receiver.count("svc.web.gunicorn.requests") == 25  # exactly: no request twice
    assert all(line.endswith("|#env:test") for line in lines if line)
    assert "svc.web.gunicorn.workers:2|g|#env:test" in lines
    assert receiver.count("svc.web.gunicorn.request.status.2xx") == 25
    assert any(line.startswith("svc.web.gunicorn.request.duration:") and "|ms" in line for line in lines)
    assert receiver.count("svc.web.prefork_lb.spawns.start") == 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--statsd-host", "localhost"], "expected HOST:PORT"),
        (["--dogstatsd-tags", "bad tag"], "DogStatsD tag"),
        (["--statsd-interval", "0"], "between 0.1 and 3600"),
        (["--statsd-host", "127.0.0.1:8125", "--stats-bind", "off"], "--statsd-host needs the admin process"),
    ],
)
def test_bad_statsd_flags_are_one_line_and_exit_2(flags: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "prefork_lb", *flags, "-b", f"{HOST}:{free_port()}", "tests.apps:hello"],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
