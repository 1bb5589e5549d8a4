"""Throughput and survival under worker kills: prefork_lb (both dispatch modes), gunicorn, granian.

Usage: python bench/kill.py [--duration 10] [--kill-duration 10] [--clients 32]
                            [--servers prefork_lb-reuseport,prefork_lb-shared,gunicorn-gevent,granian]

Every server runs bench.apps:hello with 2 workers on a free 127.0.0.1 port. For each, in turn:

1. throughput: wrk, keep-alive, 64 connections (like bench/run.py), after a short warmup;
2. kills: a load generator in a separate process opens a NEW connection for every request
   (``--clients`` concurrent asyncio clients; ``Connection: close``) for ``--kill-duration``
   seconds, while this process SIGKILLs one of the server's worker processes (a child of its
   master, picked at random) every ``--kill-interval`` seconds.

Just before each kill the victim is frozen with SIGSTOP and its TCP sockets are listed (/proc
and netlink sock_diag): the client ports of the connections it had accepted are exactly the requests it
had in flight when it died (a frozen process accepts nothing more). A failed request whose client
port is in that set, and whose lifetime spans the kill, is "in flight at kill"; every other
failure (connection refused, reset or timed out while queued in a backlog, ...) is "lost". The
target is lost = 0. Raw counts per error kind are kept in the .json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import random
import signal
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(REPO))

from bench import harness  # noqa: E402

APP = "bench.apps:hello"
PY = sys.executable
WORKERS = 2
CONNECTIONS = 64  # wrk -c for the throughput part
BASELINE = "gunicorn-gevent"

ServerCmd = Callable[[int, str], list[str]]


def _prefork(dispatch: str) -> ServerCmd:
    return lambda port, pidfile: [
        PY,
        "-m",
        "prefork_lb",
        APP,
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        str(WORKERS),
        "--dispatch",
        dispatch,
        "-p",
        pidfile,
    ]


def _granian(*extra: str) -> ServerCmd:
    return lambda port, pidfile: [
        PY,
        "-m",
        "granian",
        "--interface",
        "wsgi",
        "--http",
        "1",
        "--workers",
        str(WORKERS),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra,
        "--pid-file",
        pidfile,
        APP,
    ]


SERVERS: dict[str, ServerCmd] = {
    "prefork_lb-reuseport": _prefork("reuseport"),
    "prefork_lb-shared": _prefork("shared"),
    "gunicorn-gevent": lambda port, pidfile: [
        PY,
        "-m",
        "gunicorn",
        "-k",
        "gevent",
        "-w",
        str(WORKERS),
        "--worker-connections",
        "1000",
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "-p",
        pidfile,
        APP,
    ],
    # granian stops altogether when a worker dies unless told to respawn it (see NOTES).
    "granian": _granian("--respawn-failed-workers"),
    "granian-norespawn": _granian(),
}
DEFAULT_SERVERS = "prefork_lb-reuseport,prefork_lb-shared,gunicorn-gevent,granian"

NOTES = [
    "All servers serve bench.apps:hello with 2 worker processes, on the same machine as the load "
    "generators (no CPU pinning); compare servers within this report, not across machines.",
    "Throughput: wrk, HTTP/1.1 keep-alive, 64 connections, 1 thread, after a warmup; p99 is wrk's "
    "(coordinated-omission corrected, see bench/README.md). ratio = req/s / gunicorn-gevent's req/s.",
    "Kills: a load generator in its own process runs N asyncio clients; each loops connect, send "
    "`GET / HTTP/1.1` with `Connection: close`, read the whole response (Content-Length), close "
    "(SO_LINGER 0, so no TIME_WAIT piles up), with a per-request timeout. Meanwhile, every kill "
    "interval, one live child of the server's master (its pid from the pidfile) is picked at random "
    "and SIGKILLed (workers are the master's direct children for all three servers).",
    "Listening sockets, which decide what happens to connections queued when a worker dies: "
    "gunicorn and prefork_lb --dispatch shared have one listening socket, opened by the master and "
    "inherited by every worker: one accept queue that outlives any worker. prefork_lb --dispatch "
    "reuseport has one SO_REUSEPORT socket per slot, opened and kept open by the master, so a dead "
    "worker's queue waits for its replacement. granian 2.x on Linux: the main process only reserves the "
    "port (a bound, non-listening socket, fd 3, inherited by the workers); each `granian ... worker-N` "
    "process opens its own SO_REUSEPORT listening socket (`ss -tlnp` shows one LISTEN socket per worker "
    "pid), so the connections queued on a worker's socket are reset when that worker dies.",
    "In flight at kill: just before the SIGKILL the victim gets SIGSTOP (and the benchmark waits until "
    "/proc shows it stopped, state T), then its TCP connections are read (socket inodes from /proc/PID/fd matched with a netlink sock_diag dump of the server port's "
    "sockets, TIME_WAIT excluded): the peer (client) ports of its non-listening sockets are the "
    "connections it had accepted and not yet closed (for a gevent worker, also those not yet read). A stopped process cannot accept more, so the set is exact at the moment of "
    "death; the stop lasts a few ms (snapshot_ms in the .json). `in flight` counts those connections; "
    "a failed request is `in flight` when its client port is in the victim's set and it was in "
    "progress at the kill. Every other failure is `lost`: it was refused, queued in a backlog, or sent "
    "to a worker other than the victim. The target is lost = 0.",
    "other CPU %: CPU time the machine spent on processes other than this benchmark, its load "
    "generators and the server's process tree during the measured part (from /proc/stat and the "
    "processes' CPU times; % of one CPU; near 0 on a quiet machine). A high value means something "
    "else shared the CPUs and the numbers of that row are depressed.",
    "Failure kinds: connect_refused (ECONNREFUSED: no listening socket), connect_timeout, "
    "reset_before_response / eof_before_response (connection reset or closed before any response "
    "byte: what a worker dying with the request, or a listening socket closed with the connection still "
    "in its accept queue, look like to a client), *_mid_response (cut off mid-response), "
    "timeout_before_response (no answer within the per-request timeout), bad_status (not 200).",
    "granian: `--respawn-failed-workers` is added (not the default): without it granian shuts down "
    "entirely at the first worker death (checked with granian 2.8.7: `Unexpected exit from worker-1` "
    "then `Shutting down granian`); `--servers granian-norespawn` runs that variant. Even with it, "
    "granian exits (`Worker crash loop detected, exiting`) when a worker index dies again within "
    "5.5 s of its last respawn (granian/server/common.py), which kills every second soon cause.",
    "prefork_lb backs off a slot whose worker dies within a second of starting (0.1 s, doubling, and "
    "the master acts on it at its next 0.5 s tick); a replacement started right after one kill is "
    "about 1 s old at the next, so random kills every second trigger it. In reuseport mode the "
    "connections hashed to that slot wait in its queue for the replacement: no failures, but slower "
    "requests (max ms), and since the clients are closed-loop they can all end up waiting there "
    "(see the ok/failed per second in the .json).",
]

# -- the connection-per-request load generator (runs in a child process) ---------------------------

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
KINDS = (
    "ok",
    "bad_status",
    "connect_refused",
    "connect_timeout",
    "connect_error",
    "send_reset",
    "send_error",
    "reset_before_response",
    "reset_mid_response",
    "eof_before_response",
    "eof_mid_response",
    "timeout_before_response",
    "timeout_mid_response",
    "recv_error",
)
KIND = {k: i for i, k in enumerate(KINDS)}
LINGER0 = struct.pack("ii", 1, 0)


class _State:
    __slots__ = ("phase", "got", "lport")

    def __init__(self) -> None:
        self.phase = "connect"
        self.got = 0
        self.lport = 0


def _content_end(buf: bytearray) -> int | None:
    """Where the response ends (head + Content-Length), once the head is in; None before."""
    idx = buf.find(b"\r\n\r\n")
    if idx < 0:
        return None
    for line in bytes(buf[:idx]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return idx + 4 + int(value.strip())
    return -1  # no Content-Length: read to EOF


async def _request(loop: asyncio.AbstractEventLoop, addr: tuple[str, int], st: _State) -> str:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    try:
        try:
            await loop.sock_connect(sock, addr)
        except ConnectionRefusedError:
            return "connect_refused"
        except OSError:
            return "connect_error"
        st.lport = sock.getsockname()[1]
        st.phase = "send"
        try:
            await loop.sock_sendall(sock, REQUEST)
        except (ConnectionResetError, BrokenPipeError):
            return "send_reset"
        except OSError:
            return "send_error"
        st.phase = "recv"
        buf = bytearray()
        end: int | None = None
        while True:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                return "reset_mid_response" if buf else "reset_before_response"
            except OSError:
                return "recv_error"
            if not chunk:
                if not buf:
                    return "eof_before_response"
                if end is None or end >= 0:  # head incomplete, or fewer bytes than announced
                    return "eof_mid_response"
                break
            buf += chunk
            st.got = len(buf)
            if end is None:
                end = _content_end(buf)
            if end is not None and 0 <= end <= len(buf):
                break
        return "ok" if buf[9:13] == b"200 " else "bad_status"
    finally:
        sock.close()


async def _client(
    addr: tuple[str, int], t_end: float, timeout: float, out: list[tuple[float, float, int, int]]
) -> None:
    loop = asyncio.get_running_loop()
    while time.monotonic() < t_end:
        st = _State()
        t0 = time.monotonic()
        try:
            kind = await asyncio.wait_for(_request(loop, addr, st), timeout)
        except asyncio.TimeoutError:
            kind = (
                "connect_timeout"
                if st.phase == "connect"
                else "timeout_mid_response"
                if st.got
                else "timeout_before_response"
            )
        out.append((t0, time.monotonic(), KIND[kind], st.lport))


def _loadgen(conn: Any, port: int, clients: int, t_start: float, duration: float, timeout: float) -> None:
    """Child process: wait for t_start, run the clients until t_start + duration, send the records."""

    async def main() -> list[tuple[float, float, int, int]]:
        out: list[tuple[float, float, int, int]] = []
        await asyncio.sleep(max(0.0, t_start - time.monotonic()))
        await asyncio.gather(
            *(_client(("127.0.0.1", port), t_start + duration, timeout, out) for _ in range(clients))
        )
        return out

    cpu0 = sum(os.times()[:2])
    records = asyncio.run(main())
    conn.send({"records": records, "cpu_s": sum(os.times()[:2]) - cpu0})
    conn.close()


# -- the killer ------------------------------------------------------------------------------------


def _workers(master: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(master).children()
    except psutil.NoSuchProcess:
        return []
    alive = []
    for p in kids:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


# Netlink sock_diag (what `ss` uses): a dump of the TCP sockets in some states, without the
# (possibly tens of thousands of) TIME_WAIT entries a full /proc/net/tcp read would parse.
_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _NLMSG_ERROR, _NLMSG_DONE = 4, 20, 2, 3
_TCP_STATES = 0xFFF & ~(1 << 6) & ~(1 << 10)  # every TCP state but TIME_WAIT and LISTEN


def _tcp_peers_by_inode(port: int) -> dict[int, int]:
    """{socket inode: peer port} of the IPv4 TCP sockets whose local port is ``port``."""
    req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, _TCP_STATES) + bytes(48)
    msg = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, 0x301, 1, 0) + req  # REQUEST|DUMP
    out: dict[int, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2.0)
        nl.send(msg)
        while True:
            data = nl.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if length < 16:
                    raise OSError("malformed netlink reply")
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    raise OSError(-struct.unpack_from("=i", data, off + 16)[0], "sock_diag dump failed")
                sport, dport = struct.unpack_from(">HH", data, off + 20)
                inode = struct.unpack_from("=I", data, off + 84)[0]
                if sport == port and inode:
                    out[inode] = dport
                off += (length + 3) & ~3


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def _age(pid: int) -> float | None:
    """Seconds since ``pid`` started, to 10 ms (psutil's create_time rounds the boot time to 1 s)."""
    try:
        start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 2)


def _wait_stopped(pid: int, deadline: float) -> bool:
    """Wait until ``pid`` is really stopped (state T): SIGSTOP takes effect when the target
    next leaves the kernel, so an accept() it is inside of may still complete meanwhile."""
    end = time.monotonic() + deadline
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state in ("T", "t"):
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.0002)


def kill_one(master: int, port: int, rng: random.Random, t0: float) -> dict[str, Any]:
    """SIGSTOP a random worker, list the client ports of its accepted connections, SIGKILL it."""
    workers = _workers(master)
    rec: dict[str, Any] = {"t": round(time.monotonic() - t0, 4), "pid": None, "workers_alive": len(workers)}
    if not workers:
        rec["skipped"] = "no live worker"
        return rec
    victim = rng.choice(workers)
    rec["pid"] = victim.pid
    rec["age_s"] = _age(victim.pid)
    ports: list[int] = []
    t_stop = time.monotonic()
    try:
        os.kill(victim.pid, signal.SIGSTOP)
        rec["stopped"] = _wait_stopped(victim.pid, 0.2)
        mine = _socket_inodes(victim.pid)
        ports = [peer for inode, peer in _tcp_peers_by_inode(port).items() if inode in mine]
    except OSError as exc:
        rec["snapshot_error"] = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            rec["skipped"] = "victim already gone"
    t_kill = time.monotonic()
    rec.update(
        t_stop_abs=t_stop,
        t_kill_abs=t_kill,
        snapshot_ms=round(1000 * (t_kill - t_stop), 2),
        in_flight=len(ports),
        ports=sorted(ports),
    )
    return rec


def _pct(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def kill_run(
    master: int, port: int, proc: Any, args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    rx, tx = ctx.Pipe(duplex=False)
    t_start = time.monotonic() + 0.5
    gen = ctx.Process(
        target=_loadgen, args=(tx, port, args.clients, t_start, args.kill_duration, args.timeout), daemon=True
    )
    gen.start()
    tx.close()
    kills: list[dict[str, Any]] = []
    server_exit: float | None = None
    try:
        n = 1
        while True:
            at = t_start + n * args.kill_interval
            if at > t_start + args.kill_duration - 0.5:  # leave the last half second without kills
                break
            while time.monotonic() < at:  # poll the server meanwhile, to note when it exits
                time.sleep(min(0.05, max(0.0, at - time.monotonic())))
                if server_exit is None and proc.poll() is not None:
                    server_exit = time.monotonic() - t_start
            kills.append(kill_one(master, port, rng, t_start))
            n += 1
        end = time.monotonic() + args.kill_duration + args.timeout + 30
        while not rx.poll(0.05):
            if server_exit is None and proc.poll() is not None:
                server_exit = time.monotonic() - t_start
            if time.monotonic() > end:
                raise RuntimeError("the load generator sent no results")
        data = rx.recv()
        if server_exit is None and proc.poll() is not None:
            server_exit = time.monotonic() - t_start
        data["server_exit_t"] = None if server_exit is None else round(server_exit, 2)
    finally:
        gen.join(timeout=10)
        if gen.is_alive():
            gen.kill()
            gen.join(timeout=5)
    return analyse(data, kills, t_start, args)


def analyse(
    data: dict[str, Any], kills: list[dict[str, Any]], t_start: float, args: argparse.Namespace
) -> dict[str, Any]:
    records: list[tuple[float, float, int, int]] = data["records"]
    done = [k for k in kills if "t_kill_abs" in k and k.get("skipped") is None]
    by_port: dict[int, list[dict[str, Any]]] = {}
    for k in done:
        k["in_flight_failed"] = k["in_flight_ok"] = 0
        for p in k["ports"]:
            by_port.setdefault(p, []).append(k)
    kinds: Counter[str] = Counter()
    kinds_in_flight: Counter[str] = Counter()
    kinds_lost: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    latencies: list[float] = []
    per_second: dict[int, list[int]] = {}
    for t0, t1, kind_i, lport in records:
        kind = KINDS[kind_i]
        kinds[kind] += 1
        sec = per_second.setdefault(int(t0 - t_start), [0, 0])
        victim = (
            next((k for k in by_port.get(lport, ()) if t0 <= k["t_kill_abs"] and t1 >= k["t_stop_abs"]), None)
            if lport
            else None
        )
        if kind == "ok":
            sec[0] += 1
            latencies.append(t1 - t0)
            if victim is not None:
                victim["in_flight_ok"] += 1
            continue
        sec[1] += 1
        if victim is not None:
            victim["in_flight_failed"] += 1
            kinds_in_flight[kind] += 1
        else:
            kinds_lost[kind] += 1
        before = [k["t_kill_abs"] for k in done if k["t_kill_abs"] <= t1]
        failures.append(
            {
                "t_start": round(t0 - t_start, 4),
                "t_end": round(t1 - t_start, 4),
                "kind": kind,
                "client_port": lport,
                "in_flight": victim is not None,
                "victim_pid": victim["pid"] if victim else None,
                "since_last_kill_s": round(t1 - max(before), 4) if before else None,
            }
        )
    for k in kills:
        k.pop("t_stop_abs", None)
        k.pop("t_kill_abs", None)
    latencies.sort()
    ok = kinds["ok"]
    failed = sum(kinds.values()) - ok
    n_kills = len(done)
    return {
        "kills": n_kills,
        "kills_skipped": len(kills) - n_kills,
        "requests": len(records),
        "ok": ok,
        "failed": failed,
        "ok_rps": round(ok / args.kill_duration, 1),
        "in_flight_at_kill": sum(k["in_flight"] for k in done),
        "failed_in_flight": sum(kinds_in_flight.values()),
        "lost": sum(kinds_lost.values()),
        "failed_per_kill": round(failed / n_kills, 3) if n_kills else None,
        "lost_per_kill": round(sum(kinds_lost.values()) / n_kills, 3) if n_kills else None,
        "latency_ms": {
            "p50": _ms(_pct(latencies, 0.50)),
            "p99": _ms(_pct(latencies, 0.99)),
            "max": _ms(latencies[-1] if latencies else None),
        },
        "kinds": dict(kinds),
        "kinds_in_flight": dict(kinds_in_flight),
        "kinds_lost": dict(kinds_lost),
        "server_exit_t": data["server_exit_t"],
        "lost_before_server_exit": None
        if data["server_exit_t"] is None
        else sum(1 for f in failures if not f["in_flight"] and f["t_end"] < data["server_exit_t"]),
        "loadgen_cpu_s": round(data["cpu_s"], 2),
        "loadgen_cpu_pct": round(100 * data["cpu_s"] / args.kill_duration, 1),
        "kill_log": kills,
        "failures": failures[:2000],
        "failures_truncated": len(failures) > 2000,
        "per_second_ok_failed": [per_second.get(s, [0, 0]) for s in range(int(args.kill_duration) + 1)],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 2)


# -- per server ------------------------------------------------------------------------------------


def _master_pid(pidfile: Path, proc: Any) -> int:
    end = time.monotonic() + 5
    while time.monotonic() < end:
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            time.sleep(0.05)
    return int(proc.pid)  # every server here runs its master as the process we started


def _wait_workers(master: int, n: int, deadline: float) -> None:
    """Wait (bounded) until the master has ``n`` children, then half a second for them to boot."""
    end = time.monotonic() + deadline
    while len(_workers(master)) < n and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.5)


class CpuMeter:
    """CPU time used on the machine by processes other than this benchmark and the server tree.

    This machine may be shared: the CPU time all CPUs spent busy (/proc/stat: user, nice, system,
    irq, softirq) minus what this process, its reaped children (wrk, the load generator) and the
    server's process tree used. Approximate (a killed worker not yet reaped by its master is
    missed; softirq time for our own traffic counts as foreign where the kernel accounts it apart
    from tasks), but a quiet machine reads near 0 and a busy one does not.
    """

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.start = self._read()

    @staticmethod
    def _busy() -> tuple[float, float]:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        hz = os.sysconf("SC_CLK_TCK")
        return (f[0] + f[1] + f[2] + f[5] + f[6]) / hz, f[7] / hz  # busy, steal

    def _ours(self) -> float:
        t = os.times()
        total = t.user + t.system + t.children_user + t.children_system
        try:
            root = psutil.Process(self.server_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return total
        for p in procs:
            try:
                c = p.cpu_times()
                total += c.user + c.system + c.children_user + c.children_system
            except psutil.Error:
                pass
        return total

    def _read(self) -> tuple[float, float, float, float]:
        busy, steal = self._busy()
        return time.monotonic(), busy, steal, self._ours()

    def stop(self) -> dict[str, float]:
        t1, busy1, steal1, ours1 = self._read()
        t0, busy0, steal0, ours0 = self.start
        wall = max(1e-6, t1 - t0)
        return {
            "other_cpu_pct": round(100 * max(0.0, (busy1 - busy0) - (ours1 - ours0)) / wall, 1),
            "ours_cpu_pct": round(100 * (ours1 - ours0) / wall, 1),
            "steal_pct": round(100 * (steal1 - steal0) / wall, 1),
        }


def source_digest() -> str:
    """A short hash of prefork_lb/**/*.py: workers started after a kill load the code on disk, so a
    tree edited during the run would mix versions (the report says so when this changes)."""
    h = hashlib.sha256()
    for f in sorted((REPO / "prefork_lb").rglob("*.py")):
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def bench_one(name: str, args: argparse.Namespace, tmp: Path, rng: random.Random) -> dict[str, Any]:
    port = harness.free_port()
    pidfile = tmp / f"{name}.pid"
    cmd = SERVERS[name](port, str(pidfile))
    row: dict[str, Any] = {
        "server": name,
        "workers": WORKERS,
        "command": " ".join(cmd),
        "status": "ok",
        "rps": None,
        "p50_ms": None,
        "p99_ms": None,
        "errors_total": None,
        "kill": None,
    }
    log = tmp / f"{name}.log"
    proc = harness.start_server(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, log_path=log)
    try:
        harness.wait_http(port, deadline=20.0, proc=proc)
        master = _master_pid(pidfile, proc)
        row["master_pid"] = master
        _wait_workers(master, WORKERS, 10.0)
        row["worker_tree"] = [{"pid": p.pid, "cmdline": " ".join(p.cmdline())} for p in _workers(master)]
        url = f"http://127.0.0.1:{port}/"
        if "throughput" in args.parts:
            if args.warmup > 0:
                harness.run_wrk(url, CONNECTIONS, args.warmup)
            meter = CpuMeter(master)
            res = harness.run_wrk(url, CONNECTIONS, args.duration)
            row["cpu"] = meter.stop()
            if proc.poll() is not None:
                raise harness.ServerError(f"server exited with status {proc.returncode} during wrk")
            row.update(
                rps=res["rps"],
                p50_ms=res["latency_ms"].get("p50"),
                p99_ms=res["latency_ms"].get("p99"),
                mean_ms_little=round(1000 * CONNECTIONS / res["rps"], 3),
                latency_ms=res["latency_ms"],
                requests=res["requests"],
                errors=res["errors"],
                errors_total=res["errors_total"],
                wrk_command=res["command"],
                wrk_output=res["raw"],
            )
        if "kill" in args.parts:
            print(
                f"[{name}] {args.kill_duration:g}s of connection-per-request load with {args.clients} clients, "
                f"a worker SIGKILLed every {args.kill_interval:g}s ...",
                file=sys.stderr,
            )
            meter = CpuMeter(master)
            row["kill"] = kill_run(master, port, proc, args, rng)
            row["kill"]["cpu"] = meter.stop()
            row["server_alive_after_kills"] = proc.poll() is None
    except Exception as exc:  # report and go on with the next server
        row["status"] = f"failed: {exc}"
        tail = harness.log_tail(log, 8)
        print(
            f"[{name}] FAILED: {exc}\n  command: {row['command']}\n  server log tail:\n    "
            + "\n    ".join(tail or ["(empty)"]),
            file=sys.stderr,
        )
    finally:
        row["exit_status"] = harness.stop(proc)
        if log.exists():
            text = log.read_text(errors="replace")
            row["server_log_tail"] = text.strip().splitlines()[-20:]
            row["server_log_tracebacks"] = text.count("Traceback (most recent call last)")
            if row["server_log_tracebacks"] and row["status"] == "ok":
                row["status"] = f"ok, {row['server_log_tracebacks']} tracebacks in the server log"
    return row


def _kinds(counter: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1])) or "-"


def tables(rows: list[dict[str, Any]], args: argparse.Namespace) -> tuple[str, str]:
    base = next((r for r in rows if r["server"] == BASELINE and r["rps"]), None) or next(
        (r for r in rows if r["rps"]), None
    )
    for r in rows:
        r["ratio"] = round(r["rps"] / base["rps"], 3) if base and r["rps"] else None
    thr = harness.markdown_table(
        [
            "server",
            "workers",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            f"ratio vs {base['server'] if base else '-'}",
            "other CPU %",
            "status",
        ],
        [
            [
                r["server"],
                r["workers"],
                harness.fmt(r["rps"], ",.0f"),
                harness.fmt(r["p50_ms"], ".2f"),
                harness.fmt(r["p99_ms"], ".2f"),
                "-" if r["errors_total"] is None else r["errors_total"],
                harness.fmt(r["ratio"], ".2f"),
                harness.fmt(r.get("cpu", {}).get("other_cpu_pct"), ".0f"),
                r["status"],
            ]
            for r in rows
        ],
    )
    krows = []
    for r in rows:
        k = r.get("kill")
        if not k:
            krows.append([r["server"]] + ["-"] * 12 + [r["status"]])
            continue
        lost = (
            str(k["lost"])
            if k["server_exit_t"] is None
            else f"{k['lost']} ({k['lost_before_server_exit']} before exit)"
        )
        krows.append(
            [
                r["server"],
                k["kills"],
                f"{k['ok']:,}",
                harness.fmt(k["ok_rps"], ",.0f"),
                k["failed"],
                k["in_flight_at_kill"],
                k["failed_in_flight"],
                lost,
                harness.fmt(k["failed_per_kill"], ".2f"),
                _kinds(k["kinds_in_flight"]),
                _kinds(k["kinds_lost"]),
                f"{harness.fmt(k['latency_ms']['p99'], '.1f')} / {harness.fmt(k['latency_ms']['max'], '.0f')}",
                harness.fmt(k.get("cpu", {}).get("other_cpu_pct"), ".0f"),
                ("yes" if k["lost"] == 0 else "NO")
                + ("" if k["server_exit_t"] is None else f" (server exited at {k['server_exit_t']:g} s)"),
            ]
        )
    kill = harness.markdown_table(
        [
            "server",
            "kills",
            "ok",
            "ok req/s",
            "failed",
            "in flight at kill",
            "failed: in flight",
            "failed: lost",
            "failed/kill",
            "in-flight kinds",
            "lost kinds",
            "p99 / max ms",
            "other CPU %",
            "lost = 0",
        ],
        krows,
    )
    return thr, kill


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds of measured wrk load per server")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured wrk load first (0: none)")
    ap.add_argument(
        "--kill-duration",
        type=float,
        default=10.0,
        help="seconds of connection-per-request load while workers are killed",
    )
    ap.add_argument("--kill-interval", type=float, default=1.0, help="seconds between two SIGKILLs")
    ap.add_argument("--clients", type=int, default=32, help="concurrent connection-per-request clients")
    ap.add_argument(
        "--timeout", type=float, default=5.0, help="per-request timeout of those clients, seconds"
    )
    ap.add_argument(
        "--servers", default=DEFAULT_SERVERS, help=f"comma-separated; known: {', '.join(SERVERS)}"
    )
    ap.add_argument("--parts", default="throughput,kill", help="throughput, kill, or both (default)")
    ap.add_argument("--seed", type=int, default=1, help="seed for picking the worker to kill")
    ap.add_argument("--no-save", action="store_true", help="print the tables only, write no result files")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := [n for n in names if n not in SERVERS]:
        ap.error(f"unknown server(s) {unknown}; known: {list(SERVERS)}")
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not args.parts or args.parts - {"throughput", "kill"}:
        ap.error("--parts takes throughput, kill or throughput,kill")
    if (
        args.duration < 1
        or args.clients < 1
        or args.clients > 512
        or args.kill_duration < 2
        or not 0.1 <= args.kill_interval <= args.kill_duration
        or args.timeout <= 0
    ):
        ap.error(
            "need --duration >= 1, 1 <= --clients <= 512, --kill-duration >= 2, "
            "0.1 <= --kill-interval <= --kill-duration, --timeout > 0"
        )

    meta: dict[str, Any] = {
        "title": "Throughput and survival under worker kills (bench/kill.py)",
        "machine": harness.machine_info(),
    }
    rng = random.Random(args.seed)
    digest = source_digest()
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="prefork_lb-kill-") as tmp:
        for name in names:
            if "throughput" in args.parts:
                print(
                    f"[{name}] {args.warmup}s warmup + {args.duration}s wrk with {CONNECTIONS} connections ...",
                    file=sys.stderr,
                )
            rows.append(bench_one(name, args, Path(tmp), rng))
    thr, kill = tables(rows, args)
    out = []
    if "throughput" in args.parts:
        out += ["### Throughput (wrk, keep-alive)", "", thr, ""]
    if "kill" in args.parts:
        out += [
            f"### Under load with a worker SIGKILLed every {args.kill_interval:g} s "
            f"(new connection per request)",
            "",
            kill,
            "",
        ]
        cpu = ", ".join(f"{r['server']} {r['kill']['loadgen_cpu_pct']:.0f}%" for r in rows if r.get("kill"))
        out += [f"Load generator CPU (one process, % of one core): {cpu}.", ""]
    table = "\n".join(out).rstrip()
    print(table)
    meta["params"] = {
        "workers": WORKERS,
        "app": APP,
        "parts": ",".join(sorted(args.parts)),
        "throughput": f"wrk -t1 -c{CONNECTIONS} -d{args.duration}s --latency after {args.warmup}s warmup",
        "kill_load": f"{args.clients} asyncio clients, new connection per request, {args.kill_duration:g}s, "
        f"per-request timeout {args.timeout:g}s",
        "kills": f"SIGSTOP + snapshot + SIGKILL of a random worker every {args.kill_interval:g}s "
        f"(none in the last 0.5 s), seed {args.seed}",
    }
    meta["params"]["prefork_lb_source_sha256"] = digest
    if source_digest() != digest:
        meta["params"]["prefork_lb_source_sha256"] += f" at start, {source_digest()} at the end"
        print(
            "WARNING: prefork_lb/ changed during the run; the prefork_lb rows may mix code versions",
            file=sys.stderr,
        )
        NOTES.insert(
            0,
            "WARNING: prefork_lb/ source files changed during this run (another edit in the "
            "working tree); workers respawned after a kill load the code on disk, so the "
            "prefork_lb rows may mix code versions. Rerun.",
        )
    meta["params"]["loadavg_at_start"] = loadavg
    meta["params"]["loadavg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["commands"] = {r["server"]: r["command"] for r in rows}
    meta["commands"]["this benchmark"] = " ".join(
        ["python bench/kill.py", *(sys.argv[1:] if argv is None else argv)]
    )
    meta["notes"] = NOTES
    if not args.no_save:
        md, js = harness.write_results("kill", rows, meta, table)
        print(f"wrote {md.relative_to(REPO)} and {js.name}", file=sys.stderr)
    return 0 if all(r["status"].startswith("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
