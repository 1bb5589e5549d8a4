"""ASGI benchmark: prefork_lb --interface asgi against uvicorn, granian and gunicorn+UvicornWorker
(and, when named in --servers, gunicorn-prefork: gunicorn -k prefork_lb.gunicorn.AsgiWorker).

Usage: python bench/asgi.py [--duration 10] [--warmup 2] [--rounds 3] [--connections 64]
                            [--servers prefork_lb,uvicorn,granian,gunicorn-uvicorn]
                            [--parts memory,http,ws] [--ws-clients 64] [--ws-size 64]
                            [--pin] [--output STEM] [--no-save]

Every server runs 1 worker serving the raw ASGI app bench.asgi_apps:app on a free 127.0.0.1
port. Per round, each server in turn is started once and measured in three parts:

- memory: RSS and PSS (psutil) of its worker process right after boot (idle: it has answered
  the readiness GET only), and of all its processes;
- http: wrk keep-alive GET / (``-t1 -c64``, warm-up then measured run), req/s, p50/p99, CPU;
- ws: bench/ws_client.py in its own process: ``--ws-clients`` WebSocket connections each doing
  bounded ping-pong (send a message, wait for the echo) for ``--duration`` seconds; messages/s.

With ``--pin`` each server (all its processes) runs on the first usable CPU and wrk and the
WebSocket client on the others (taskset), so that no server shares its CPU with the load
generator: a per-core comparison that the scheduler's placement does not move.

Rounds are interleaved (all servers once, then again), ratios are taken within a round, and the
summary gives prefork_lb's median ratio against each peer next to the goal. Results go to
bench/results/ (.md and .json; ``--output STEM`` names the files).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(REPO))

from bench import harness  # noqa: E402

APP = "bench.asgi_apps:app"
PY = sys.executable
HOST = harness.HOST
PACKAGES = (
    "uvicorn",
    "uvicorn-worker",
    "granian",
    "gunicorn",
    "websockets",
    "wsproto",
    "httptools",
    "uvloop",
)

SERVERS: dict[str, Callable[[int], list[str]]] = {
    # No admin process and no control socket: the worker alone, as the peers run.
    "prefork_lb": lambda port: [
        *(PY, "-m", "prefork_lb", APP, "--interface", "asgi", "-w", "1", "-b", f"{HOST}:{port}"),
        *("--stats-bind", "off", "--control-socket", "off"),
    ],
    "uvicorn": lambda port: [
        *(PY, "-m", "uvicorn", APP, "--http", "httptools", "--loop", "uvloop", "--ws", "wsproto"),
        *("--host", HOST, "--port", str(port), "--log-level", "warning", "--no-access-log"),
    ],
    "uvicorn-websockets": lambda port: [
        *(PY, "-m", "uvicorn", APP, "--http", "httptools", "--loop", "uvloop", "--ws", "websockets"),
        *("--host", HOST, "--port", str(port), "--log-level", "warning", "--no-access-log"),
    ],
    "granian": lambda port: [
        *(PY, "-m", "granian", "--interface", "asgi", "--http", "1", "--workers", "1"),
        *("--host", HOST, "--port", str(port), "--log-level", "warning", APP),
    ],
    "gunicorn-uvicorn": lambda port: [
        *(PY, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", "1"),
        *("-b", f"{HOST}:{port}", "--log-level", "warning", APP),
    ],
    # Our engine in gunicorn's workers (prefork_lb.gunicorn.AsgiWorker): not in the defaults.
    "gunicorn-prefork": lambda port: [
        *(PY, "-m", "gunicorn", "-k", "prefork_lb.gunicorn.AsgiWorker", "-w", "1"),
        *("-b", f"{HOST}:{port}", "--log-level", "warning", APP),
    ],
}
GOALS = {"uvicorn": 1.5, "granian": 1.2, "gunicorn-uvicorn": 2.0}  # prefork_lb req/s over theirs
NOTES = [
    "wrk and the WebSocket client run on the same machine as the server; compare servers within "
    "this report, not across machines. pinned (see the parameters): no: the scheduler places "
    "them and they compete for every CPU; yes: each server (all its processes) runs on one CPU "
    "and the load generator on the others (taskset), one CPU each for the server's work.",
    "Every server runs 1 worker process; access logs are off (uvicorn --no-access-log, the "
    "others' default); prefork_lb runs without its admin process (--stats-bind off).",
    "uvicorn: --http httptools --loop uvloop --ws wsproto (the WebSocket library the ws part "
    "compares with); gunicorn-uvicorn: uvicorn_worker.UvicornWorker with its defaults (httptools, "
    "uvloop and uvicorn's 'auto' WebSocket implementation); gunicorn-prefork (when asked for): "
    "prefork_lb.gunicorn.AsgiWorker, gunicorn's master with our ASGI engine; granian: --interface asgi --http 1, "
    "otherwise its defaults.",
    "memory: psutil memory_full_info() of the worker process (for uvicorn without --workers the "
    "server process is the worker) right after the readiness GET; PSS shares pages among the "
    "processes that map them, so a forked worker's PSS is below its RSS.",
    "ws: one client process (bench/ws_client.py, the websockets asyncio client, permessage-deflate "
    "off, uvloop) with N connections, each sending a text message and waiting for its echo; "
    "messages/s counts round trips. Its own CPU use is in the .json (client_cpu_s).",
    "other CPU %: CPU time (% of one CPU) the machine spent during the measured part on "
    "processes other than the server's and the load generator's (/proc/stat minus both); well "
    "above 0 means another job took CPU and that row's numbers are depressed.",
    "ratio = prefork_lb's req/s (messages/s) over the peer's, within the same round; the summary "
    "gives the median over rounds. On a shared machine the worker CPU per request is steadier than "
    "req/s (another job takes time slices, not much of the work per request): the summary gives "
    "the peer's worker CPU per request over prefork_lb's too.",
]


def worker_procs(name: str, root: psutil.Process) -> list[psutil.Process]:
    """The processes of ``root``'s tree that serve requests."""
    kids = root.children(recursive=True)

    def titled(word: str) -> list[psutil.Process]:
        out = []
        for k in kids:
            try:
                if word in " ".join(k.cmdline()):
                    out.append(k)
            except psutil.Error:
                pass
        return out

    if name == "prefork_lb":
        return titled("prefork_lb: worker")
    if name == "granian":
        return titled(" worker-")
    if name.startswith("gunicorn"):
        return root.children()
    return [root]  # uvicorn without --workers serves in its one process


def memory(name: str, pid: int) -> dict[str, Any]:
    """RSS and PSS (MiB) of the worker process(es) and of the whole tree, after boot."""
    root = psutil.Process(pid)
    workers = worker_procs(name, root)
    tree = [root, *root.children(recursive=True)]

    def mib(procs: list[psutil.Process], field: str) -> float:
        return round(sum(getattr(p.memory_full_info(), field) for p in procs) / 2**20, 2)

    if not workers:
        raise harness.ServerError("no worker process found in the server's process tree")
    return {
        "worker_pids": [p.pid for p in workers],
        "worker_rss_mib": mib(workers, "rss"),
        "worker_pss_mib": mib(workers, "pss"),
        "all_rss_mib": mib(tree, "rss"),
        "all_pss_mib": mib(tree, "pss"),
        "processes": len(tree),
    }


def cpu_seconds(name: str, pid: int) -> tuple[float, float]:
    """User + system CPU seconds so far of the worker process(es) and of the whole tree."""
    root = psutil.Process(pid)
    workers = {p.pid for p in worker_procs(name, root)}
    total = work = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
        work += (t.user + t.system) if p.pid in workers else 0.0
    return work, total


def busy_cpu() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: user, nice, system, irq, softirq)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / os.sysconf("SC_CLK_TCK")


class Window:
    """A measured part: the server's CPU (workers, all processes), the load generator's (the
    children this process waited for meanwhile: wrk, the WebSocket client), and the CPU the
    machine spent on anything else (``other_cpu_pct``, % of one CPU: near 0 on a quiet machine)."""

    def __init__(self, name: str, pid: int) -> None:
        self.name, self.pid = name, pid

    def __enter__(self) -> Window:
        self.w0, self.t0 = cpu_seconds(self.name, self.pid)
        self.busy0, self.kids0, self.wall0 = busy_cpu(), self._kids(), time.monotonic()
        return self

    @staticmethod
    def _kids() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def __exit__(self, *exc: object) -> None:
        w1, t1 = cpu_seconds(self.name, self.pid)
        wall = max(1e-6, time.monotonic() - self.wall0)
        self.worker_s, self.server_s, self.loadgen_s = w1 - self.w0, t1 - self.t0, self._kids() - self.kids0
        other = busy_cpu() - self.busy0 - self.server_s - self.loadgen_s
        self.other_cpu_pct = round(100 * max(0.0, other) / wall, 1)


def run_ws_client(
    port: int, clients: int, duration: float, size: int, cpus: list[int] | None = None
) -> dict[str, Any]:
    """bench/ws_client.py in its own process group, bounded (killed ``duration`` + 60 s in)."""
    cmd = [PY, "-m", "bench.ws_client", "--port", str(port), "--clients", str(clients)]
    cmd = harness.pinned([*cmd, "--duration", str(duration), "--size", str(size)], cpus)
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise RuntimeError("the WebSocket client did not finish in time") from None
    if proc.returncode != 0:
        raise RuntimeError(f"the WebSocket client exited {proc.returncode}: {err.strip()[-500:]}")
    return {**json.loads(out), "command": " ".join(cmd)}


def bench_one(name: str, args: argparse.Namespace, logdir: Path, rnd: int) -> dict[str, Any]:
    port = harness.free_port()
    cmd = SERVERS[name](port)
    row: dict[str, Any] = {"server": name, "round": rnd, "command": " ".join(cmd), "status": "ok"}
    log = logdir / f"{name}-{rnd}.log"
    server_cpus, load_cpus = args.cpus or (None, None)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = harness.start_server(cmd, cwd=REPO, env=env, log_path=log, cpus=server_cpus)
    try:
        harness.wait_http(port, deadline=20.0, proc=proc)
        if "memory" in args.parts:
            row["memory"] = memory(name, proc.pid)
        url = f"http://{HOST}:{port}/"
        if "http" in args.parts:
            if args.warmup > 0:
                harness.run_wrk(url, args.connections, args.warmup, cpus=load_cpus)
            with Window(name, proc.pid) as win:
                res = harness.run_wrk(url, args.connections, args.duration, cpus=load_cpus)
            n = max(1, res["requests"] or 0)
            row["http"] = {
                "rps": res["rps"],
                "p50_ms": res["latency_ms"].get("p50"),
                "p99_ms": res["latency_ms"].get("p99"),
                "requests": res["requests"],
                "errors": res["errors"],
                "errors_total": res["errors_total"],
                "worker_cpu_ms_per_1k": round(1e6 * win.worker_s / n, 2),
                "all_cpu_ms_per_1k": round(1e6 * win.server_s / n, 2),
                "wrk_cpu_s": round(win.loadgen_s, 3),
                "other_cpu_pct": win.other_cpu_pct,
                "wrk_command": res["command"],
                "wrk_output": res["raw"],
            }
        if "ws" in args.parts:
            if args.warmup > 0:
                run_ws_client(port, args.ws_clients, min(args.warmup, 2), args.ws_size, load_cpus)
            with Window(name, proc.pid) as win:
                ws = run_ws_client(port, args.ws_clients, args.duration, args.ws_size, load_cpus)
            ws["worker_cpu_ms_per_1k"] = round(1e6 * win.worker_s / max(1, ws["round_trips"]), 2)
            ws["other_cpu_pct"] = win.other_cpu_pct
            row["ws"] = ws
            if ws["errors"] or ws["connected"] < ws["clients"]:
                row["status"] = f"ws errors: {ws['errors']}, {ws['connected']}/{ws['clients']} connected"
        if proc.poll() is not None:
            raise harness.ServerError(f"server exited with status {proc.returncode} during the run")
    except Exception as exc:  # report and go on with the next server
        row["status"] = f"failed: {exc}"
        tail = harness.log_tail(log, 8)
        print(
            f"[{name}] FAILED: {exc}\n  server log tail:\n    " + "\n    ".join(tail or ["(empty)"]),
            file=sys.stderr,
        )
    finally:
        row["exit_status"] = harness.stop(proc)
        row["log_tail"] = harness.log_tail(log, 20)
    return row


def value(row: dict[str, Any], part: str, key: str) -> float | None:
    v = (row.get(part) or {}).get(key)
    return float(v) if isinstance(v, (int, float)) else None


def ratios(
    rows: list[dict[str, Any]], part: str, key: str, base: str = "prefork_lb", higher_is_better: bool = True
) -> dict[str, list[float]]:
    """Per server: ``base``'s value over that server's (``higher_is_better=False``: the server's over
    ``base``'s), in each round where both have one."""
    out: dict[str, list[float]] = {}
    for r in rows:
        if r["server"] == base:
            continue
        ref = next((m for m in rows if m["server"] == base and m["round"] == r["round"]), None)
        a, b = (value(ref, part, key) if ref else None), value(r, part, key)
        if a and b:
            out.setdefault(r["server"], []).append(round(a / b if higher_is_better else b / a, 3))
    return out


def tables(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    f = harness.fmt
    parts = []
    if "http" in args.parts:
        parts += [
            f"### HTTP: hello world, keep-alive, wrk -t1 -c{args.connections} -d{args.duration}s",
            "",
            harness.markdown_table(
                [
                    "server",
                    "round",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "errors",
                    "worker CPU ms/1k req",
                    "all CPU ms/1k req",
                    "other CPU %",
                    "status",
                ],
                [
                    [
                        r["server"],
                        r["round"],
                        f(value(r, "http", "rps"), ",.0f"),
                        f(value(r, "http", "p50_ms"), ".2f"),
                        f(value(r, "http", "p99_ms"), ".2f"),
                        f(value(r, "http", "errors_total"), ".0f"),
                        f(value(r, "http", "worker_cpu_ms_per_1k"), ".1f"),
                        f(value(r, "http", "all_cpu_ms_per_1k"), ".1f"),
                        f(value(r, "http", "other_cpu_pct"), ".0f"),
                        r["status"],
                    ]
                    for r in rows
                ],
            ),
            "",
        ]
    if "ws" in args.parts:
        parts += [
            f"### WebSocket echo: {args.ws_clients} clients, {args.ws_size}-byte text messages, {args.duration}s",
            "",
            harness.markdown_table(
                [
                    "server",
                    "round",
                    "messages/s",
                    "rtt p50 ms",
                    "rtt p99 ms",
                    "worker CPU ms/1k msg",
                    "client CPU s",
                    "other CPU %",
                    "errors",
                ],
                [
                    [
                        r["server"],
                        r["round"],
                        f(value(r, "ws", "messages_per_s"), ",.0f"),
                        f(value(r, "ws", "rtt_p50_ms"), ".2f"),
                        f(value(r, "ws", "rtt_p99_ms"), ".2f"),
                        f(value(r, "ws", "worker_cpu_ms_per_1k"), ".1f"),
                        f(value(r, "ws", "client_cpu_s"), ".2f"),
                        f(value(r, "ws", "other_cpu_pct"), ".0f"),
                        (r.get("ws") or {}).get("errors", "-"),
                    ]
                    for r in rows
                ],
            ),
            "",
        ]
    if "memory" in args.parts:
        parts += [
            "### Memory after boot (MiB)",
            "",
            harness.markdown_table(
                [
                    "server",
                    "round",
                    "worker RSS",
                    "worker PSS",
                    "all processes RSS",
                    "all processes PSS",
                    "processes",
                ],
                [
                    [
                        r["server"],
                        r["round"],
                        f(value(r, "memory", "worker_rss_mib"), ".1f"),
                        f(value(r, "memory", "worker_pss_mib"), ".1f"),
                        f(value(r, "memory", "all_rss_mib"), ".1f"),
                        f(value(r, "memory", "all_pss_mib"), ".1f"),
                        f(value(r, "memory", "processes"), ".0f"),
                    ]
                    for r in rows
                ],
            ),
            "",
        ]
    parts += ["### Summary (medians over rounds)", "", summary(rows, args)]
    return "\n".join(parts)


def summary(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    names = list(dict.fromkeys(r["server"] for r in rows))

    def med(name: str, part: str, key: str) -> float | None:
        vals = [v for r in rows if r["server"] == name and (v := value(r, part, key)) is not None]
        return statistics.median(vals) if vals else None

    http_r, ws_r = ratios(rows, "http", "rps"), ratios(rows, "ws", "messages_per_s")
    mem_r = ratios(rows, "memory", "worker_pss_mib", higher_is_better=False)
    cpu_r = ratios(rows, "http", "worker_cpu_ms_per_1k", higher_is_better=False)
    vs_uvicorn = ratios(rows, "http", "rps", base="uvicorn", higher_is_better=False)

    def ratio_cell(table: dict[str, list[float]], name: str) -> str:
        return f"{statistics.median(table[name]):.2f}" if table.get(name) else "-"

    body = []
    for n in names:
        goal = GOALS.get(n)
        got = statistics.median(http_r[n]) if http_r.get(n) else None
        verdict = "-" if goal is None or got is None else ("met" if got >= goal else "not met")
        body.append(
            [
                n,
                harness.fmt(med(n, "http", "rps"), ",.0f"),
                harness.fmt(med(n, "ws", "messages_per_s"), ",.0f"),
                harness.fmt(med(n, "memory", "worker_pss_mib"), ".1f"),
                ratio_cell(http_r, n),
                "-" if goal is None else f">= {goal:g}",
                verdict,
                ratio_cell(cpu_r, n),
                ratio_cell(ws_r, n),
                ratio_cell(mem_r, n),
                ratio_cell(vs_uvicorn, n),
            ]
        )
    head = [
        "server",
        "req/s",
        "ws msg/s",
        "worker PSS MiB",
        "prefork_lb req/s ratio",
        "goal",
        "goal met",
        "worker CPU/req: theirs/prefork_lb",
        "prefork_lb ws ratio",
        "PSS: theirs/prefork_lb",
        "req/s over uvicorn's",
    ]
    return harness.markdown_table(head, body)


def save(rows: list[dict[str, Any]], meta: dict[str, Any], table: str, stem: str | None) -> Path:
    if stem is None:
        md, _ = harness.write_results("asgi", rows, meta, table)
        return md
    base, n = stem, 1
    while (harness.RESULTS_DIR / f"{base}.md").exists() or (harness.RESULTS_DIR / f"{base}.json").exists():
        n += 1
        base = f"{stem}-{n}"
    md = harness.RESULTS_DIR / f"{base}.md"
    md.write_text(harness.report_markdown(meta, table))
    md.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds of measured load per part")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first (0: none)")
    ap.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument(
        "--servers",
        default="prefork_lb,uvicorn,granian,gunicorn-uvicorn",
        help=f"known: {', '.join(SERVERS)}",
    )
    ap.add_argument("--parts", default="memory,http,ws", help="any of memory,http,ws")
    ap.add_argument("--ws-clients", type=int, default=64, help="concurrent WebSocket clients")
    ap.add_argument("--ws-size", type=int, default=64, help="bytes per WebSocket message")
    ap.add_argument(
        "--pin", action="store_true", help="the server on the first CPU, the load generator on the others"
    )
    ap.add_argument("--output", help="result file stem in bench/results/ (default: <date>-asgi-<machine>)")
    ap.add_argument("--no-save", action="store_true", help="print the tables only")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := [n for n in names if n not in SERVERS]:
        ap.error(f"unknown server(s) {unknown}; known: {list(SERVERS)}")
    if bad := [p for p in args.parts if p not in ("memory", "http", "ws")]:
        ap.error(f"unknown part(s) {bad}; known: memory, http, ws")
    if (
        min(args.duration, args.connections, args.rounds, args.ws_clients, args.ws_size) < 1
        or args.warmup < 0
    ):
        ap.error("--duration, --connections, --rounds, --ws-clients and --ws-size must be >= 1")
    args.cpus = harness.split_cpus() if args.pin else None
    if args.pin and args.cpus is None:
        ap.error("--pin needs 2 usable CPUs or more")
    if args.output and (os.sep in args.output or args.output.startswith(".")):
        ap.error("--output is a file stem in bench/results/, without a directory")

    info = harness.machine_info()
    for pkg in PACKAGES:
        try:
            info["packages"][pkg] = harness.metadata.version(pkg)
        except harness.metadata.PackageNotFoundError:
            info["packages"][pkg] = "not installed"
    meta: dict[str, Any] = {
        "title": "ASGI: hello world, WebSocket echo, memory (bench/asgi.py)",
        "machine": info,
    }
    pinned = (
        f"yes: servers on CPU {args.cpus[0]}, load generator on CPU {args.cpus[1]}" if args.cpus else "no"
    )
    print(f"pinned: {pinned}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="prefork_lb-asgi-bench-") as logdir:
        for rnd in range(1, args.rounds + 1):
            for name in names:
                print(f"[{name}] round {rnd}: {', '.join(args.parts)} ...", file=sys.stderr)
                rows.append(bench_one(name, args, Path(logdir), rnd))
    table = tables(rows, args)
    print(table)
    meta["params"] = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "rounds": args.rounds,
        "parts": ",".join(args.parts),
        "ws_clients": args.ws_clients,
        "ws_message_bytes": args.ws_size,
        "pinned": pinned,
        "app": APP,
        "workers": 1,
    }
    meta["commands"] = {r["server"]: r["command"] for r in rows}
    meta["notes"] = NOTES
    if not args.no_save:
        md = save(rows, meta, table, args.output)
        print(f"wrote {md.relative_to(REPO)} and {md.with_suffix('.json').name}", file=sys.stderr)
    return 0 if any(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
