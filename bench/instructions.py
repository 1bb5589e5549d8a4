"""Instructions per request, counted by callgrind: a measure of code cost that machine noise cannot move.

Usage: python bench/instructions.py [--trees DIR,DIR...] [--targets worker,proxy] [--rounds 2]
                                    [--stats default|off,on] [--small 400] [--large 2400] [--no-save]

On a shared machine wrk's req/s swings by 30% from one run to the next, which hides a 5% change
in what the code costs. This counts machine instructions instead. For each source tree (a
checkout of prefork_lb: the current one, and for example ``git worktree add /tmp/base REV`` to
compare with an older commit) and each target, it starts the server under ``valgrind
--tool=callgrind`` twice and sends it SMALL and then LARGE GET requests over 8 keep-alive
connections. The difference in the busiest process's instruction count, divided by LARGE - SMALL,
is what one request costs there: start-up, imports and warm-up cancel out.

- ``worker``: ``python -m prefork_lb bench.apps:hello --workers 1``, counted in the worker;
- ``proxy``: ``python -m prefork_lb proxy`` in front of 2 backends (the same app, not under
  valgrind, started once), counted in the proxy process;
- ``asgi``: ``python -m prefork_lb bench.asgi_apps:app --interface asgi --workers 1``, counted in
  the worker;
- ``gunicorn-uvicorn``: the peer for ``asgi``, ``gunicorn -k uvicorn_worker.UvicornWorker -w 1``
  with the same app, counted in its worker; not a prefork_lb tree, so measured once per round.

``--stats off,on`` measures each tree twice, interleaved: with ``--stats-bind off`` (no admin
process) and with an admin process on a free port that is scraped (``GET /metrics``) once after
the warm-up of every run, so its cost cancels out like the start-up's (a scrape costs per
scrape, not per request). The default, ``default``, passes no ``--stats-bind``.

Trees are measured in turn, ``--rounds`` times, interleaved. Runs of the same code differ by
about 1%. Needs valgrind (bench/install-tools.sh installs it). All traffic goes to 127.0.0.1;
every process runs in its own session and is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(REPO))

from bench import harness  # noqa: E402

APP = "bench.apps:hello"
ASGI_APP = "bench.asgi_apps:app"
TARGETS = ("worker", "proxy", "asgi", "gunicorn-uvicorn")
PEERS = ("gunicorn-uvicorn",)  # targets that run no prefork_lb tree
PY = sys.executable
CONNECTIONS = 8


def load(port: int, requests: int) -> None:
    """``requests`` GETs over CONNECTIONS keep-alive connections, each answered 200."""
    errors: list[str] = []

    def one(count: int) -> None:
        conn = http.client.HTTPConnection(harness.HOST, port, timeout=120)
        try:
            for _ in range(count):
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors.append(f"HTTP {resp.status}")
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(requests // CONNECTIONS,)) for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise harness.ServerError(f"{len(errors)} failed requests, first: {errors[0]}")


def busiest(out_dir: str) -> int:
    """The largest instruction total among the callgrind files of one run (one per process)."""
    totals = []
    for path in glob.glob(f"{out_dir}/cg.*"):
        text = Path(path).read_text(errors="replace")
        m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
        totals.append(int(m.group(1)) if m else 0)
    if not totals:
        raise harness.ServerError("callgrind wrote no output")
    return max(totals)


def scrape(port: int) -> None:
    """One GET /metrics on the admin listener (answered 200)."""
    conn = http.client.HTTPConnection(harness.HOST, port, timeout=120)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise harness.ServerError(f"/metrics answered {resp.status}")
    finally:
        conn.close()


def count(tree: Path, target: str, requests: int, backends: Sequence[int], stats: str = "default") -> int:
    """``stats``: "default" (no --stats-bind: the proxy gets a free port), "off", or "on" (a
    free port, scraped once after the warm-up)."""
    out = tempfile.mkdtemp(prefix="prefork-cg-")
    port = harness.free_port()
    admin = harness.free_port()
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p", PY, "-m", "prefork_lb"]
    if target == "worker":
        cmd += [APP, "-b", f"{harness.HOST}:{port}", "--workers", "1", "--offload-processes", "0"]
    elif target == "asgi":
        cmd += [ASGI_APP, "--interface", "asgi", "-b", f"{harness.HOST}:{port}", "--workers", "1"]
        cmd += ["--control-socket", "off"]
    elif target == "gunicorn-uvicorn":
        cmd[-2:] = ["-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", "1"]
        cmd += ["-b", f"{harness.HOST}:{port}", "--log-level", "warning", ASGI_APP]
        stats = "peer"
    else:
        upstreams = ",".join(f"{harness.HOST}:{b}" for b in backends)
        cmd += ["proxy", "-b", f"{harness.HOST}:{port}", "--backends", upstreams]
        cmd += ["--health-check-interval", "0", "--strategy", "least_connections"]
        if stats == "default":
            cmd += ["--stats-bind", f"{harness.HOST}:{admin}"]
    if stats == "off":
        cmd += ["--stats-bind", "off"]
    elif stats == "on":
        cmd += ["--stats-bind", f"{harness.HOST}:{admin}"]
    proc = harness.start_server(cmd, cwd=tree)
    try:
        harness.wait_http(port, deadline=180, proc=proc)
        load(port, 80)  # warm-up: imports, memos
        if stats == "on":
            scrape(admin)
        load(port, requests)
    finally:
        harness.stop(proc, timeout=120)
    return busiest(out)


def commit(tree: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty"], capture_output=True)
    except OSError:
        return "?"
    return out.stdout.decode().strip() or "?"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--trees", default=str(REPO), help="comma-separated prefork_lb checkouts")
    ap.add_argument("--targets", default="worker,proxy")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--stats",
        default="default",
        help="comma-separated: default (no --stats-bind), off (--stats-bind off), on (admin, scraped)",
    )
    ap.add_argument("--small", type=int, default=400)
    ap.add_argument("--large", type=int, default=2400)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    trees = [Path(t).resolve() for t in args.trees.split(",") if t]
    targets = [t for t in args.targets.split(",") if t]
    variants = [v for v in args.stats.split(",") if v]
    if unknown := [v for v in variants if v not in ("default", "off", "on")]:
        ap.error(f"unknown --stats {unknown} (default, off, on)")
    for t in targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r} ({', '.join(TARGETS)})")
    backends = [harness.free_port(), harness.free_port()]
    backend_procs = []
    rows: list[dict[str, Any]] = []
    try:
        if "proxy" in targets:
            for b in backends:
                cmd = [PY, "-m", "prefork_lb", APP, "-b", f"{harness.HOST}:{b}", "--workers", "1"]
                backend_procs.append(harness.start_server([*cmd, "--offload-processes", "0"], cwd=REPO))
            for b, p in zip(backends, backend_procs, strict=True):
                harness.wait_http(b, proc=p)
        for rnd in range(1, args.rounds + 1):
            for target in targets:
                for tree in trees[:1] if target in PEERS else trees:
                    for stats in variants[:1] if target in PEERS else variants:
                        small = count(tree, target, args.small, backends, stats)
                        large = count(tree, target, args.large, backends, stats)
                        per = (large - small) / (args.large - args.small)
                        row = {
                            "round": rnd,
                            "target": target,
                            "tree": str(tree),
                            "commit": "-" if target in PEERS else commit(tree),
                            "stats": stats,
                            "instructions/request": round(per),
                        }
                        print(
                            f"[{target}] round {rnd} {tree} stats={stats}: {per:,.0f} instructions per request",
                            flush=True,
                        )
                        rows.append(row)
    finally:
        for p in backend_procs:
            harness.stop(p)
    if not args.no_save:
        meta = {
            "title": "Instructions per request (callgrind)",
            "machine": harness.machine_info(),
            "params": {"small": args.small, "large": args.large, "connections": CONNECTIONS},
            "commands": {"this run": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])},
            "notes": [" ".join(__doc__.split("\n\n")[2].split())],
        }
        md, _ = harness.write_results("instructions", rows, meta)
        print(f"wrote {md.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
