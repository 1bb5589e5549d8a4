"""Hello-world throughput benchmark: prefork_lb against gunicorn (gevent) and granian.

Usage: python bench/run.py [--duration 10] [--connections 64] [--rounds 1]
                           [--servers prefork_lb,gunicorn-gevent,granian] [--workers 1] [--threads 1]

``--servers prefork_lb-stats-off,prefork_lb-stats-on --rounds 3`` compares /metrics off and on,
interleaved: ``--stats-bind off`` against an admin process on a free port that is scraped
(GET /metrics) every ``--scrape-interval`` seconds during the measured run.

Each server serves bench.apps:hello on a free 127.0.0.1 port; after a warmup, wrk measures
req/s and latency; the table goes to stdout and to bench/results/ (.md and .json).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(REPO))

from bench import harness  # noqa: E402
from prefork_lb.dispatch import DISPATCH_MODES  # noqa: E402

APP = "bench.apps:hello"
PY = sys.executable


def _prefork_lb(dispatch: str) -> Callable[[int, int], list[str]]:
    return lambda port, w: [
        PY,
        "-m",
        "prefork_lb",
        APP,
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        str(w),
        "--dispatch",
        dispatch,
    ]


SERVERS: dict[str, Callable[[int, int], list[str]]] = {
    "prefork_lb": lambda port, w: [PY, "-m", "prefork_lb", APP, "-b", f"127.0.0.1:{port}", "-w", str(w)],
    # /metrics off and on; no control socket in either, so "off" has no admin process at all.
    "prefork_lb-stats-off": lambda port, w: [
        *SERVERS["prefork_lb"](port, w),
        *("--stats-bind", "off", "--control-socket", "off"),
    ],
    "prefork_lb-stats-on": lambda port, w: [
        *SERVERS["prefork_lb"](port, w),
        *("--stats-bind", f"127.0.0.1:{harness.free_port()}", "--control-socket", "off"),
    ],
    **{f"prefork_lb-{mode}": _prefork_lb(mode) for mode in DISPATCH_MODES if mode != "proxy"},
    "gunicorn-gevent": lambda port, w: [
        PY,
        "-m",
        "gunicorn",
        "-k",
        "gevent",
        "-w",
        str(w),
        "--worker-connections",
        "1000",
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        APP,
    ],
    "gunicorn-prefork_lb": lambda port, w: [
        PY,
        "-m",
        "gunicorn",
        "-k",
        "prefork_lb.gunicorn.Worker",
        "-w",
        str(w),
        "--worker-connections",
        "1000",
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        APP,
    ],
    "gunicorn-sync": lambda port, w: [
        PY,
        "-m",
        "gunicorn",
        "-k",
        "sync",
        "-w",
        str(w),
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        APP,
    ],
    "granian": lambda port, w: [
        PY,
        "-m",
        "granian",
        "--interface",
        "wsgi",
        "--http",
        "1",
        "--workers",
        str(w),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        APP,
    ],
}
NOTES = [
    "wrk runs on the same machine as the server and competes with it for CPU (no pinning).",
    "wrk sends HTTP/1.1 keep-alive GET / to 127.0.0.1; all servers keep connections alive except "
    "gunicorn-sync (off by default), which closes after every response, so wrk reconnects.",
    "granian runs with its defaults except --http 1: per worker 1 runtime thread and "
    "backlog/2 = 512 blocking (WSGI) threads.",
    "ratio = req/s relative to the first server in --servers that ran successfully.",
    "CPU ms/1k req: user + system CPU of the server's worker processes (and of all its processes: "
    "master, admin, workers) during the measured run, per 1,000 requests; steadier than req/s "
    "on a shared machine.",
    "p50/p99 come from wrk's histogram after its coordinated-omission correction (wrk 4 adds "
    "synthetic samples for every request slower than twice the mean per-connection interval), so a "
    "server that stalls some connections while serving others shows a p99 above what any request saw. "
    "The true mean per-request latency is connections / req/s (Little's law): mean_ms_little in the .json.",
]


def admin_port(cmd: list[str]) -> int | None:
    """The admin port a prefork_lb command line names with --stats-bind HOST:PORT, else None."""
    if "--stats-bind" not in cmd:
        return None
    value = cmd[cmd.index("--stats-bind") + 1]
    host, _, port = value.rpartition(":")
    return int(port) if host and port.isdigit() else None


def bench_one(name: str, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    port = harness.free_port()
    cmd = SERVERS[name](port, args.workers)
    row: dict[str, Any] = {
        "server": name,
        "workers": args.workers,
        "command": " ".join(cmd),
        "status": "ok",
        "rps": None,
        "p50_ms": None,
        "p99_ms": None,
        "errors_total": None,
    }
    log = logdir / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = harness.start_server(cmd, cwd=REPO, env=env, log_path=log)
    try:
        harness.wait_http(port, deadline=20.0, proc=proc)
        url = f"http://127.0.0.1:{port}/"
        if args.warmup > 0:
            harness.run_wrk(url, args.connections, args.warmup, args.threads, args.new_connection)
        admin = admin_port(cmd)
        cpu_before = harness.tree_cpu(proc.pid)
        if admin is not None:
            with harness.Scraper(admin, args.scrape_interval) as scraper:
                res = harness.run_wrk(url, args.connections, args.duration, args.threads, args.new_connection)
            row.update(scrapes=scraper.scrapes, scrape_failures=scraper.failures)
        else:
            res = harness.run_wrk(url, args.connections, args.duration, args.threads, args.new_connection)
        # CPU per request is steadier than req/s on a shared machine: another process's load
        # takes the server's time slices, not (much) the work each request needs.
        row["cpu_ms_per_1k"] = harness.cpu_per_request(
            cpu_before, harness.tree_cpu(proc.pid), res["requests"]
        )
        if proc.poll() is not None:
            raise harness.ServerError(f"server exited with status {proc.returncode} during the run")
        row.update(
            rps=res["rps"],
            p50_ms=res["latency_ms"].get("p50"),
            p99_ms=res["latency_ms"].get("p99"),
            mean_ms_little=round(1000 * args.connections / res["rps"], 3),
            latency_ms=res["latency_ms"],
            requests=res["requests"],
            errors=res["errors"],
            errors_total=res["errors_total"],
            wrk_command=res["command"],
            wrk_output=res["raw"],
        )
    except Exception as exc:  # report and go on with the next server
        tail = harness.log_tail(log, 8)
        row["status"] = f"failed: {exc}"
        print(
            f"[{name}] FAILED: {exc}\n  command: {row['command']}\n  server log tail:\n    "
            + "\n    ".join(tail or ["(empty)"]),
            file=sys.stderr,
        )
    finally:
        row["exit_status"] = harness.stop(proc)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds of measured load per server")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first (0: none)")
    ap.add_argument("--connections", type=int, default=64, help="concurrent keep-alive connections")
    ap.add_argument(
        "--servers",
        default="prefork_lb,gunicorn-gevent,granian",
        help=f"comma-separated, first is the ratio baseline; known: {', '.join(SERVERS)}",
    )
    ap.add_argument("--workers", type=int, default=1, help="server worker processes")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (-t)")
    ap.add_argument(
        "--new-connection",
        action="store_true",
        help="a new TCP connection per request (wrk -H 'Connection: close')",
    )
    ap.add_argument(
        "--rounds", type=int, default=1, help="run the --servers list this many times, interleaved"
    )
    ap.add_argument(
        "--scrape-interval", type=float, default=1.0, help="seconds between GET /metrics of an admin listener"
    )
    ap.add_argument("--name", default="hello", help="result file name part (default: hello)")
    ap.add_argument("--no-save", action="store_true", help="print the table only, write no result files")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := [n for n in names if n not in SERVERS]:
        ap.error(f"unknown server(s) {unknown}; known: {list(SERVERS)}")
    if args.duration < 1 or args.connections < 1 or args.workers < 1 or args.threads < 1 or args.rounds < 1:
        ap.error("--duration, --connections, --workers, --threads and --rounds must be >= 1")

    kind = "a new connection per request" if args.new_connection else "keep-alive"
    meta: dict[str, Any] = {"title": f"Hello world, {kind} (bench/run.py)", "machine": harness.machine_info()}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="prefork_lb-bench-") as logdir:
        for rnd in range(1, args.rounds + 1):
            for name in names:
                print(
                    f"[{name}] round {rnd}: {args.warmup}s warmup + {args.duration}s with "
                    f"{args.connections} connections ...",
                    file=sys.stderr,
                )
                row = bench_one(name, args, Path(logdir))
                row["round"] = rnd
                rows.append(row)
    base = next((r for r in rows if r["rps"]), None)
    for r in rows:
        # Relative to the baseline server's run in the same round (the machine's load drifts).
        same = base and next(
            (b for b in rows if b["server"] == base["server"] and b["round"] == r["round"]), None
        )
        ref = same if same and same["rps"] else base
        r["ratio"] = round(r["rps"] / ref["rps"], 3) if ref and r["rps"] else None
    table = harness.markdown_table(
        [
            "server",
            "round",
            "workers",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            f"ratio vs {base['server'] if base else '-'}",
            "worker CPU ms/1k req",
            "all CPU ms/1k req",
            "status",
        ],
        [
            [
                r["server"],
                r["round"],
                r["workers"],
                harness.fmt(r["rps"], ",.0f"),
                harness.fmt(r["p50_ms"], ".2f"),
                harness.fmt(r["p99_ms"], ".2f"),
                "-" if r["errors_total"] is None else r["errors_total"],
                harness.fmt(r["ratio"], ".2f"),
                harness.fmt((r.get("cpu_ms_per_1k") or {}).get("workers"), ".1f"),
                harness.fmt((r.get("cpu_ms_per_1k") or {}).get("total"), ".1f"),
                r["status"],
            ]
            for r in rows
        ],
    )
    print(table)
    meta["params"] = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "wrk_threads": args.threads,
        "workers": args.workers,
        "rounds": args.rounds,
        "scrape_interval_s": args.scrape_interval,
        "app": APP,
        "wrk": " ".join(
            harness.wrk_command(
                "http://127.0.0.1:PORT/", args.connections, args.duration, args.threads, args.new_connection
            )
        ),
    }
    meta["commands"] = {r["server"]: r["command"] for r in rows}
    meta["notes"] = NOTES
    if not args.no_save:
        md, js = harness.write_results(args.name, rows, meta, table)
        print(f"wrote {md.relative_to(REPO)} and {js.name}", file=sys.stderr)
    return 0 if base else 1


if __name__ == "__main__":
    sys.exit(main())
