"""The L7 proxy benchmark: prefork_lb's proxy vs nginx and HAProxy in front of the same 2 workers.

Usage: python bench/proxy.py [--duration 10] [--warmup 2] [--connections 64]
                             [--fronts prefork_lb-proxy,nginx,haproxy,direct-worker,prefork_lb-integrated,
                                       prefork_lb-proxy-pipeline-1]
                             [--scrape-interval 0] [--no-save]

``--fronts prefork_lb-proxy-stats-off,prefork_lb-proxy,... --scrape-interval 1`` compares the proxy
with /metrics off (``--stats-bind off``) and on (scraped every second); --fronts may repeat a
front end, so that runs can be interleaved; ``--rounds N`` runs the whole --fronts list N times
(interleaved) and adds a summary: each front end's median req/s and its ratio to the baseline's.

``--scenario cache``: the response cache. The backends serve ``bench.apps:cacheable`` (``hello``
with ``Cache-Control: public, max-age=3600``) and the default front ends are ``nginx-cache`` (1
worker, ``proxy_cache`` in the run's temp dir, honouring the backend's Cache-Control) and
``prefork_lb-proxy-cache`` (``--cache-size 64``); the warmup fills the caches, a check request
must come back as a hit (nginx's ``$upstream_cache_status``, prefork_lb's ``Cache-Status``), and
the measured run is hits only (prefork_lb: cache misses during the run are recorded from
/lb-stats; both: the backends' CPU). The baseline is ``nginx-cache``.

Two backends (``python -m prefork_lb bench.apps:hello --workers 1``, each on its own 127.0.0.1
port) are started once for the whole run. Then each front end in turn is started on a free
port in front of them, warmed up and measured with the same wrk load (keep-alive, 1 thread):

- ``prefork_lb-proxy``: ``python -m prefork_lb proxy --backends B1,B2 --strategy least_connections``;
- ``nginx``: 1 worker process, ``least_conn``, upstream ``keepalive`` >= the connection count;
- ``haproxy``: 1 thread, ``balance leastconn``, ``http-reuse always``;
- ``prefork_lb-proxy-pipeline-1``: the same with ``--upstream-pipeline 1`` (no pipelining to the
  backends: one request per backend connection at a time, as nginx and HAProxy do);
- ``direct-worker``: no front end, wrk straight at one backend (the ceiling of one worker);
- ``prefork_lb-integrated``: ``--dispatch proxy --workers 2``, which brings its own 2 workers
  (not the shared backends; its row splits the proxy's CPU from its workers').

Per front end: req/s, p50/p99, errors, and the front end's CPU seconds per 10k requests (user +
sys of its process tree, read with psutil just before and after the measured wrk run, divided
by the requests wrk completed); the backends' CPU likewise. ratio = req/s / nginx's req/s.

Invariants: all traffic goes to 127.0.0.1; every process started here runs in its own session
and is stopped (SIGTERM to the group, then SIGKILL) on every exit path, Ctrl-C and SIGTERM
included; a front end that fails is reported with its log tail and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(REPO))

from bench import harness  # noqa: E402

APP = "bench.apps:hello"
CACHE_APP = "bench.apps:cacheable"  # --scenario cache
CACHE_MIB = 64  # each front end's cache: far more than the one response it keeps
PY = sys.executable
BASELINE = "nginx"
CACHE_BASELINE = "nginx-cache"
PROXY_TITLE = "prefork_lb: proxy"  # process title of prefork_lb's proxy process
DEFAULT_FRONTS = (
    "prefork_lb-proxy,nginx,haproxy,direct-worker,prefork_lb-integrated,prefork_lb-proxy-pipeline-1"
)

NOTES = [
    "Everything runs on one machine over 127.0.0.1 with no CPU pinning: wrk, the front end and the "
    "2 backend workers compete for the same CPUs, so compare rows within this report only. "
    "`other CPU %` is CPU time (% of one CPU) that the machine spent on processes other than "
    "this benchmark, wrk, the front end and the backends during the measured run; a high value "
    "means that row's numbers are depressed.",
    "Backends: 2 separate prefork_lb servers (`--workers 1 --offload-processes 0`, dispatch "
    "reuseport) serving bench.apps:hello (13-byte body with Content-Length), started once and "
    "shared by prefork_lb-proxy, nginx, haproxy and direct-worker. prefork_lb-integrated runs its "
    "own 2 workers under its own master, so its backends are comparable but not the same processes.",
    "Load: wrk, 1 thread, HTTP/1.1 keep-alive, GET /, after an unmeasured warmup on the same "
    "running front end. p50/p99 are wrk's (coordinated-omission corrected, see bench/README.md).",
    "front CPU s/10k: user+sys CPU seconds of the front end's processes during the measured run "
    "(psutil cpu_times of the started process and all its descendants, before and after) per "
    "10,000 requests completed. nginx: master + worker; haproxy: its one process (-db, no master); "
    "prefork_lb-proxy: the prefork_lb master + its proxy process; prefork_lb-integrated: master + "
    "proxy process, with its worker processes counted as backends. backend CPU s/10k: the same "
    "for the backends' process trees (master + worker each).",
    "nginx: `worker_processes 1`, `least_conn`, `keepalive` (idle upstream connections) = "
    'max(128, connections), `proxy_http_version 1.1` + `proxy_set_header Connection ""`, '
    "`access_log off`, `keepalive_requests` raised on both sides so no connection is closed "
    "for having served many requests (nginx's default is 1000). Like a production config it "
    "passes Host and sets X-Forwarded-For/-Proto/-Host (prefork_lb's proxy adds those plus "
    "Forwarded, Via and the lb headers, its contract; the backends pay for the extra headers).",
    "haproxy: `nbthread 1`, `mode http`, `balance leastconn`, `http-reuse always`, "
    "`option http-keep-alive`, `option forwardfor` and X-Forwarded-Proto/-Host set, no logging, "
    "run in the foreground without a master (`-db`).",
    "prefork_lb-proxy: `--upstream-keepalive` = max(128, connections) per backend; active health "
    "checks at their defaults (GET /health every 2 s per backend; the benchmark waits until "
    "/lb-health reports every backend healthy before the warmup). The .json holds /lb-stats "
    "after the run (per-backend request split, latencies).",
    "upstream_connections in the .json: established TCP connections from the front end's processes "
    "to the backends right after the measured run (its pool of idle upstream connections).",
]


CACHE_NOTES = [
    "Cache scenario (--scenario cache): both backends serve bench.apps:cacheable, `hello` plus "
    "`Cache-Control: public, max-age=3600`. wrk asks for GET / only, so after the warmup every "
    "request is a hit of one stored 13-byte response: this measures the hit path (a lookup, the "
    "freshness and Age, the response written), not the backends. Checked per run: one GET after "
    "the warmup must be a hit (nginx `X-Cache-Status: HIT`, prefork_lb `Cache-Status: ...; hit`), "
    "and for prefork_lb `cache_misses_during_run` (from /lb-stats) must be 0.",
    "nginx-cache: the nginx front end above plus `proxy_cache_path DIR/cache levels=1:2 "
    f"keys_zone=bench:8m max_size={CACHE_MIB}m inactive=60m use_temp_path=off`, `proxy_cache bench` "
    "(no proxy_cache_valid: nginx honours the backend's Cache-Control max-age) and `add_header "
    "X-Cache-Status $upstream_cache_status` (one added header, as prefork_lb adds Age and "
    "Cache-Status). Its hits are read from a file in the page cache (open_file_cache is off, "
    "nginx's default). 1 worker process.",
    f"prefork_lb-proxy-cache: the prefork_lb-proxy command plus `--cache-size {CACHE_MIB}`: one "
    "proxy process (the standalone proxy runs one, under its master, with its admin process), "
    "its cache in that process's memory. So the comparison is 1 nginx worker against 1 "
    "prefork_lb proxy process; front CPU counts nginx's master + worker and prefork_lb's master + "
    "proxy + admin process.",
]


@dataclass
class Front:
    """One front end under test: how to start it and where wrk sends the load."""

    name: str
    cmd: list[str] | None  # None: nothing to start (direct-worker)
    port: int
    stats_port: int | None = None  # prefork_lb admin listener, for /lb-health and /lb-stats
    owns_workers: bool = False  # prefork_lb-integrated: its non-proxy children are backends
    files: dict[str, str] = field(default_factory=dict)  # generated config files, for the report
    error_log: Path | None = None  # a log the front end writes itself (nginx), tailed on failure


# -- front ends ---------------------------------------------------------------------------------


def _tool(name: str) -> str:
    """Path of nginx/haproxy: /usr/sbin is not on every user's PATH."""
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if not found:
        raise FileNotFoundError(f"{name} not found; install it with: sudo sh bench/install-tools.sh")
    return found


def _keepalive(connections: int) -> int:
    return max(128, connections)


def front_prefork_proxy(backends: list[int], workdir: Path, connections: int) -> Front:
    port, sport = harness.free_port(), harness.free_port()
    cmd = [
        PY,
        "-m",
        "prefork_lb",
        "proxy",
        "--backends",
        ",".join(f"127.0.0.1:{p}" for p in backends),
        "-b",
        f"127.0.0.1:{port}",
        "--strategy",
        "least_connections",
        "--stats-bind",
        f"127.0.0.1:{sport}",
        "--upstream-keepalive",
        str(_keepalive(connections)),
        *("--control-socket", "off"),  # so that "stats off" has no admin process at all
    ]
    return Front("prefork_lb-proxy", cmd, port, sport)


def front_prefork_proxy_unpipelined(backends: list[int], workdir: Path, connections: int) -> Front:
    front = front_prefork_proxy(backends, workdir, connections)
    assert front.cmd is not None
    return Front(
        "prefork_lb-proxy-pipeline-1", [*front.cmd, "--upstream-pipeline", "1"], front.port, front.stats_port
    )


def front_prefork_proxy_stats_off(backends: list[int], workdir: Path, connections: int) -> Front:
    """prefork_lb-proxy with ``--stats-bind off``: no admin process (compare /metrics off and on)."""
    front = front_prefork_proxy(backends, workdir, connections)
    assert front.cmd is not None
    cmd = list(front.cmd)
    cmd[cmd.index("--stats-bind") + 1] = "off"
    return Front("prefork_lb-proxy-stats-off", cmd, front.port, None)


def front_prefork_proxy_cache(backends: list[int], workdir: Path, connections: int) -> Front:
    """prefork_lb-proxy with its response cache (``--cache-size``)."""
    front = front_prefork_proxy(backends, workdir, connections)
    assert front.cmd is not None
    cmd = [*front.cmd, "--cache-size", str(CACHE_MIB)]
    return Front("prefork_lb-proxy-cache", cmd, front.port, front.stats_port)


def front_prefork_integrated(backends: list[int], workdir: Path, connections: int) -> Front:
    port, sport = harness.free_port(), harness.free_port()
    cmd = [
        PY,
        "-m",
        "prefork_lb",
        APP,
        "--dispatch",
        "proxy",
        "--workers",
        "2",
        "-b",
        f"127.0.0.1:{port}",
        "--stats-bind",
        f"127.0.0.1:{sport}",
        "--offload-processes",
        "0",
        "--upstream-keepalive",
        str(_keepalive(connections)),
    ]
    return Front("prefork_lb-integrated", cmd, port, sport, owns_workers=True)


def front_nginx(backends: list[int], workdir: Path, connections: int, cache: bool = False) -> Front:
    d = Path(tempfile.mkdtemp(prefix="nginx-", dir=workdir))  # one per start: --fronts may repeat
    d.chmod(0o755)  # as root, nginx's worker runs as nobody and must reach its temp paths
    port = harness.free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in backends)
    temps = "\n".join(
        f"    {kind}_temp_path {d}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    cache_path, cache_use = "", ""
    if cache:  # honours the backend's Cache-Control (no proxy_cache_valid)
        cache_path = (
            f"    proxy_cache_path {d}/cache levels=1:2 keys_zone=bench:8m max_size={CACHE_MIB}m "
            "inactive=60m use_temp_path=off;\n"
        )
        cache_use = (
            "            proxy_cache bench;\n            add_header X-Cache-Status $upstream_cache_status;\n"
        )
    conf = f"""daemon off;
master_process on;
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    keepalive_requests 1000000;
{temps}
{cache_path}    upstream backends {{
        least_conn;
{servers}
        keepalive {_keepalive(connections)};
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
{cache_use}        }}
    }}
}}
"""
    (d / "nginx.conf").write_text(conf)
    # -e: the error log before the config is read (else nginx tries its compiled-in /var/log path)
    cmd = [_tool("nginx"), "-p", f"{d}/", "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]
    name = "nginx-cache" if cache else "nginx"
    return Front(name, cmd, port, files={"nginx.conf": conf}, error_log=d / "error.log")


def front_nginx_cache(backends: list[int], workdir: Path, connections: int) -> Front:
    return front_nginx(backends, workdir, connections, cache=True)


def front_haproxy(backends: list[int], workdir: Path, connections: int) -> Front:
    d = Path(tempfile.mkdtemp(prefix="haproxy-", dir=workdir))
    port = harness.free_port()
    servers = "\n".join(f"    server w{i} 127.0.0.1:{p}" for i, p in enumerate(backends, 1))
    conf = f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    balance leastconn
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
{servers}
"""
    (d / "haproxy.cfg").write_text(conf)
    return Front(
        "haproxy", [_tool("haproxy"), "-db", "-f", str(d / "haproxy.cfg")], port, files={"haproxy.cfg": conf}
    )


def front_direct(backends: list[int], workdir: Path, connections: int) -> Front:
    return Front("direct-worker", None, backends[0])


FRONTS: dict[str, Callable[[list[int], Path, int], Front]] = {
    "prefork_lb-proxy": front_prefork_proxy,
    "prefork_lb-proxy-pipeline-1": front_prefork_proxy_unpipelined,
    "prefork_lb-proxy-stats-off": front_prefork_proxy_stats_off,
    "nginx": front_nginx,
    "haproxy": front_haproxy,
    "direct-worker": front_direct,
    "prefork_lb-integrated": front_prefork_integrated,
    "prefork_lb-proxy-cache": front_prefork_proxy_cache,
    "nginx-cache": front_nginx_cache,
}


# -- measuring ----------------------------------------------------------------------------------

CpuTree = dict[int, tuple[str, float]]  # pid -> (title, user+sys seconds)


def tree_cpu(pid: int) -> CpuTree:
    """{pid: (title, user+sys seconds)} of ``pid`` and all its descendants (the ones still alive)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    out: CpuTree = {}
    for p in procs:
        try:
            with p.oneshot():
                t = p.cpu_times()
                out[p.pid] = (" ".join(p.cmdline()) or p.name(), t.user + t.system)
        except psutil.Error:
            pass
    return out


def cpu_delta(before: CpuTree, after: CpuTree) -> CpuTree:
    """Per-process CPU used between two tree_cpu() snapshots (a process new since ``before`` counts whole)."""
    return {pid: (title, cpu - before.get(pid, ("", 0.0))[1]) for pid, (title, cpu) in after.items()}


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: user, nice, system, irq, softirq)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """This process plus its reaped children (wrk)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def upstream_connections(pids: list[int], own_ports: set[int]) -> int:
    """Established TCP connections that ``pids`` opened as clients (local port not one of theirs).

    Read right after a run, when wrk's connections are gone: the front end's pool of idle
    upstream connections.
    """
    n = 0
    for pid in pids:
        try:
            n += sum(
                1
                for c in psutil.Process(pid).net_connections("tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.laddr.port not in own_ports
            )
        except psutil.Error:
            pass
    return n


def get_json(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2.0) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 from /lb-health still carries the JSON
        return exc.code, json.loads(exc.read() or b"null")


def wait_all_healthy(port: int, proc: subprocess.Popen[bytes], deadline: float = 20.0) -> None:
    """Poll /lb-health until every backend is healthy, so the run starts with both in use."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise harness.ServerError(f"exited with status {proc.returncode} before it was healthy")
        try:
            _, last = get_json(port, "/lb-health")
            if last and last.get("total") and last.get("healthy") == last.get("total"):
                return
        except (OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise harness.ServerError(f"/lb-health on port {port} not all healthy within {deadline:g}s: {last}")


def check_cache_hit(url: str) -> str:
    """One GET that must come from the front end's cache (after the warmup): its cache header."""
    with urllib.request.urlopen(url, timeout=5.0) as resp:
        resp.read()
        nginx, ours = resp.headers.get("X-Cache-Status"), resp.headers.get("Cache-Status")
    if nginx == "HIT" or (ours and "; hit" in ours):
        return str(nginx or ours)
    raise harness.ServerError(
        f"not a cache hit after the warmup (X-Cache-Status={nginx!r}, Cache-Status={ours!r})"
    )


def cache_counts(port: int) -> dict[str, int]:
    """The ``cache`` section of a prefork_lb front end's /lb-stats."""
    doc = get_json(port, "/lb-stats")[1]
    cache = doc.get("cache") if isinstance(doc, dict) else None
    if not isinstance(cache, dict):
        raise harness.ServerError(f"/lb-stats has no cache section: {doc!r}")
    return cache


# -- running ------------------------------------------------------------------------------------


class Procs:
    """Every process this benchmark started, stopped in reverse order on every exit path."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        proc = harness.start_server(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, log_path=log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> int | None:
        status = harness.stop(proc)
        self.procs.remove(proc)  # only once stopped: an interrupted stop is retried by stop_all()
        return status

    def stop_all(self) -> None:
        """Stop everything still running; a second Ctrl-C meanwhile must not cut the cleanup short."""
        old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.procs:
                self.stop(self.procs[-1])
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process we started."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def start_backends(
    procs: Procs, logdir: Path, app: str = APP
) -> tuple[list[int], list[subprocess.Popen[bytes]], list[str]]:
    ports, started, cmds = [], [], []
    for i in (1, 2):
        port = harness.free_port()
        cmd = [
            PY,
            "-m",
            "prefork_lb",
            app,
            "--workers",
            "1",
            "-b",
            f"127.0.0.1:{port}",
            "--offload-processes",
            "0",
        ]
        proc = procs.start(cmd, logdir / f"backend{i}.log")
        ports.append(port)
        started.append(proc)
        cmds.append(" ".join(cmd))
    for port, proc, i in zip(ports, started, (1, 2), strict=True):
        try:
            harness.wait_http(port, deadline=20.0, proc=proc)
        except harness.ServerError as exc:
            tail = "\n    ".join(harness.log_tail(logdir / f"backend{i}.log"))
            raise harness.ServerError(f"backend {i} did not start: {exc}\n  log tail:\n    {tail}") from None
    return ports, started, cmds


def bench_front(
    name: str,
    args: argparse.Namespace,
    procs: Procs,
    backends: list[int],
    backend_procs: list[subprocess.Popen[bytes]],
    workdir: Path,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "front": name,
        "status": "ok",
        "rps": None,
        "p50_ms": None,
        "p99_ms": None,
        "errors_total": None,
        "front_cpu_per_10k": None,
        "backend_cpu_per_10k": None,
    }
    handle, logname = tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=workdir)  # --fronts may repeat
    os.close(handle)
    log = Path(logname)
    proc: subprocess.Popen[bytes] | None = None
    front: Front | None = None
    try:
        front = FRONTS[name](backends, workdir, args.connections)
        row["command"] = " ".join(front.cmd) if front.cmd else f"(none: wrk at 127.0.0.1:{front.port})"
        row["config_files"] = front.files
        if front.cmd:
            proc = procs.start(front.cmd, log)
            harness.wait_http(front.port, deadline=20.0, proc=proc)
            if front.stats_port:
                wait_all_healthy(front.stats_port, proc)
        url = f"http://127.0.0.1:{front.port}/"
        if args.warmup > 0:
            harness.run_wrk(url, args.connections, args.warmup)
        caching = name.endswith("-cache")
        if caching:
            row["cache_check"] = check_cache_hit(url)
        cache0 = cache_counts(front.stats_port) if caching and front.stats_port else None
        back_pids = [p.pid for p in backend_procs]

        def snap() -> tuple[float, float, CpuTree, CpuTree]:
            back: CpuTree = {}
            for pid in back_pids:
                back.update(tree_cpu(pid))
            return machine_busy_s(), own_cpu_s(), tree_cpu(proc.pid) if proc else {}, back

        t0, (busy0, own0, f0, b0) = time.monotonic(), snap()
        if front.stats_port and args.scrape_interval > 0:  # /metrics scraped during the run
            with harness.Scraper(front.stats_port, args.scrape_interval) as scraper:
                res = harness.run_wrk(url, args.connections, args.duration)
            row.update(scrapes=scraper.scrapes, scrape_failures=scraper.failures)
        else:
            res = harness.run_wrk(url, args.connections, args.duration)
        busy1, own1, f1, b1 = snap()
        wall = time.monotonic() - t0
        if proc is not None and proc.poll() is not None:
            raise harness.ServerError(f"exited with status {proc.returncode} during the run")
        if cache0 is not None and front.stats_port:
            cache1 = cache_counts(front.stats_port)
            row["cache_hits_during_run"] = cache1["hits"] - cache0["hits"]
            row["cache_misses_during_run"] = cache1["misses"] - cache0["misses"]

        fd, bd = cpu_delta(f0, f1), cpu_delta(b0, b1)
        accounted = sum(v[1] for v in fd.values()) + sum(v[1] for v in bd.values())
        if front.owns_workers:  # integrated: the master and its proxy process are the front end
            assert proc is not None
            bd = {pid: v for pid, v in fd.items() if pid != proc.pid and not v[0].startswith(PROXY_TITLE)}
            fd = {pid: v for pid, v in fd.items() if pid not in bd}
        front_cpu, back_cpu = sum(v[1] for v in fd.values()), sum(v[1] for v in bd.values())
        requests = res["requests"] or 0
        other = (busy1 - busy0) - (own1 - own0) - accounted
        row.update(
            rps=res["rps"],
            p50_ms=res["latency_ms"].get("p50"),
            p99_ms=res["latency_ms"].get("p99"),
            errors_total=res["errors_total"],
            errors=res["errors"],
            requests=requests,
            latency_ms=res["latency_ms"],
            mean_ms_little=round(1000 * args.connections / res["rps"], 3),
            front_cpu_s=round(front_cpu, 3),
            backend_cpu_s=round(back_cpu, 3),
            front_cpu_per_10k=round(1e4 * front_cpu / requests, 4) if requests and fd else None,
            backend_cpu_per_10k=round(1e4 * back_cpu / requests, 4) if requests else None,
            other_cpu_pct=round(100 * max(0.0, other) / wall, 1),
            front_procs=[{"pid": pid, "title": t, "cpu_s": round(c, 3)} for pid, (t, c) in fd.items()],
            backend_procs=[{"pid": pid, "title": t, "cpu_s": round(c, 3)} for pid, (t, c) in bd.items()],
            wrk_command=res["command"],
            wrk_output=res["raw"],
        )
        if proc is not None:
            own = {front.port, front.stats_port or 0}
            row["upstream_connections"] = upstream_connections(list(fd), own)
        if front.stats_port:
            try:
                row["lb_stats"] = get_json(front.stats_port, "/lb-stats")[1]
            except (OSError, ValueError) as exc:  # the measurement stands without it
                row["lb_stats"] = f"unavailable: {type(exc).__name__}: {exc}"
    except Exception as exc:  # report and go on with the next front end
        row["status"] = f"failed: {exc}"
        row["log_tail"] = harness.log_tail(log) + (
            harness.log_tail(front.error_log) if front and front.error_log else []
        )
        print(
            f"[{name}] FAILED: {exc}\n  command: {row.get('command', '-')}\n  log tail:\n    "
            + "\n    ".join(row["log_tail"] or ["(empty)"]),
            file=sys.stderr,
        )
    finally:
        if proc is not None:
            row["exit_status"] = procs.stop(proc)
    return row


def set_ratios(rows: list[dict[str, Any]], baseline: str) -> None:
    """Each row's req/s over the baseline's in the same round (the first baseline row when its
    round has none)."""
    first = next((r for r in rows if r["front"] == baseline and r["rps"]), None)
    for r in rows:
        base = next(
            (b for b in rows if b["front"] == baseline and b["rps"] and b["round"] == r["round"]), first
        )
        r["ratio"] = round(r["rps"] / base["rps"], 3) if base and r["rps"] else None


def summary_table(rows: list[dict[str, Any]], baseline: str) -> str:
    """Per front end over the rounds: median, lowest and highest req/s, the median over the
    baseline's median, and the median of its per-round ratios."""
    by: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    for r in rows:
        if r["rps"]:
            by.setdefault(r["front"], []).append(float(r["rps"]))
        if r.get("ratio"):
            ratios.setdefault(r["front"], []).append(float(r["ratio"]))
    base = statistics.median(by[baseline]) if baseline in by else None
    return harness.markdown_table(
        [
            "front end",
            "runs",
            "median req/s",
            "min",
            "max",
            f"median / {baseline}'s median",
            "median of the per-round ratios",
        ],
        [
            [
                name,
                len(v),
                harness.fmt(statistics.median(v), ",.0f"),
                harness.fmt(min(v), ",.0f"),
                harness.fmt(max(v), ",.0f"),
                harness.fmt(statistics.median(v) / base if base else None, ".2f"),
                harness.fmt(statistics.median(ratios[name]) if name in ratios else None, ".2f"),
            ]
            for name, v in by.items()
        ],
    )


def versions() -> dict[str, str]:
    out = {}
    for name, flag in (("nginx", "-v"), ("haproxy", "-v")):
        try:
            p = subprocess.run([_tool(name), flag], capture_output=True, text=True, timeout=10, check=False)
            out[name] = ((p.stdout + p.stderr).strip().splitlines() or ["unknown"])[0]
        except (OSError, subprocess.TimeoutExpired) as exc:
            out[name] = f"not available ({exc})"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds of measured load per front end")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first (0: none)")
    ap.add_argument("--connections", type=int, default=64, help="concurrent keep-alive connections (wrk -c)")
    ap.add_argument(
        "--fronts",
        default=None,
        help=f"comma-separated, in order (default: {DEFAULT_FRONTS}; with --scenario cache: "
        f"{CACHE_BASELINE},prefork_lb-proxy-cache); known: {', '.join(FRONTS)}",
    )
    ap.add_argument(
        "--scrape-interval",
        type=float,
        default=0.0,
        help="seconds between GET /metrics of a prefork_lb front end's admin listener during the run (0: none)",
    )
    ap.add_argument(
        "--scenario",
        choices=("plain", "cache"),
        default="plain",
        help="plain: bench.apps:hello; cache: cacheable backends, nginx-cache vs prefork_lb-proxy-cache",
    )
    ap.add_argument(
        "--rounds", type=int, default=1, help="run the --fronts list this many times, interleaved"
    )
    ap.add_argument("--no-save", action="store_true", help="print the table only, write no result files")
    args = ap.parse_args(argv)
    cache = args.scenario == "cache"
    baseline = CACHE_BASELINE if cache else BASELINE
    if args.fronts is None:
        args.fronts = f"{CACHE_BASELINE},prefork_lb-proxy-cache" if cache else DEFAULT_FRONTS
    names = [s.strip() for s in args.fronts.split(",") if s.strip()]
    if unknown := [n for n in names if n not in FRONTS]:
        ap.error(f"unknown front end(s) {unknown}; known: {list(FRONTS)}")
    if args.duration < 1 or args.connections < 1 or args.warmup < 0 or not 1 <= args.rounds <= 20:
        ap.error("--duration and --connections must be >= 1, --warmup >= 0, --rounds 1 to 20")

    title = "proxy response cache: hits only" if cache else "L7 proxy in front of 2 workers"
    meta: dict[str, Any] = {
        "title": f"{title} (bench/proxy.py)",
        "machine": harness.machine_info(),
    }
    tools = versions()
    rows: list[dict[str, Any]] = []
    procs = Procs()
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="prefork_lb-proxy-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # nginx workers (nobody, when run as root) must reach their temp paths
        try:
            backends, backend_procs, backend_cmds = start_backends(
                procs, workdir, CACHE_APP if cache else APP
            )
            for rnd in range(1, args.rounds + 1):
                for name in names:
                    print(
                        f"[{name}] round {rnd}/{args.rounds}: {args.warmup}s warmup + {args.duration}s "
                        f"with {args.connections} connections ...",
                        file=sys.stderr,
                    )
                    row = bench_front(name, args, procs, backends, backend_procs, workdir)
                    rows.append({"round": rnd, **row})
        except KeyboardInterrupt:
            print("interrupted: stopping every process started", file=sys.stderr)
            return 130
        except harness.ServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            procs.stop_all()

    set_ratios(rows, baseline)
    table = harness.markdown_table(
        [
            "round",
            "front end",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "front CPU s/10k req",
            "backend CPU s/10k req",
            f"ratio vs {baseline}",
            "other CPU %",
            "status",
        ],
        [
            [
                r["round"],
                r["front"],
                harness.fmt(r["rps"], ",.0f"),
                harness.fmt(r["p50_ms"], ".2f"),
                harness.fmt(r["p99_ms"], ".2f"),
                "-" if r["errors_total"] is None else r["errors_total"],
                harness.fmt(r["front_cpu_per_10k"], ".3f"),
                harness.fmt(r["backend_cpu_per_10k"], ".3f"),
                harness.fmt(r["ratio"], ".2f"),
                harness.fmt(r.get("other_cpu_pct"), ".0f"),
                r["status"],
            ]
            for r in rows
        ],
    )
    if args.rounds > 1:
        table += "\n\nSummary over the rounds:\n\n" + summary_table(rows, baseline)
    print(table)
    meta["params"] = {
        "scenario": args.scenario,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "scrape_interval_s": args.scrape_interval,
        "app": CACHE_APP if cache else APP,
        "backends": "2 x prefork_lb --workers 1",
        "wrk": " ".join(harness.wrk_command("http://127.0.0.1:PORT/", args.connections, args.duration)),
        **tools,
    }
    meta["commands"] = {
        "backend 1": backend_cmds[0],
        "backend 2": backend_cmds[1],
        **{r["front"]: r.get("command", "-") for r in rows},
    }
    meta["notes"] = NOTES + (CACHE_NOTES if cache else [])
    if not args.no_save:
        md, js = harness.write_results("proxy-cache" if cache else "proxy", rows, meta, table)
        print(f"wrote {md.relative_to(REPO)} and {js.name}", file=sys.stderr)
    return 0 if any(r["rps"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
