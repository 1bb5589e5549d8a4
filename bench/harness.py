"""Reusable benchmark plumbing: start/wait/stop servers, drive wrk, record results.

Every benchmark script in bench/ builds on these pieces.  All traffic goes to
127.0.0.1; every server runs in its own session (process group) so it can be
stopped as a whole with ``os.killpg``; every load run is bounded in time.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = ("prefork_lb", "gevent", "httptools", "gunicorn", "granian")


class ServerError(RuntimeError):
    """The server under test did not start, or died."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the usual bind-to-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(
    cmd: Sequence[str],
    cwd: str | Path,
    env: Mapping[str, str] | None = None,
    log_path: str | Path | None = None,
    cpus: Sequence[int] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a new session; stdout+stderr go to ``log_path`` (or are discarded);
    ``cpus``: the CPUs it (and every process it forks) may run on (default: any)."""
    out: Any = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            pinned(cmd, cpus),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if out is not subprocess.DEVNULL:
            out.close()  # the child holds its own copy of the descriptor


def pinned(cmd: Sequence[str], cpus: Sequence[int] | None) -> list[str]:
    """``cmd`` run on ``cpus`` only (util-linux taskset; the affinity is inherited by what it
    forks and execs), or as it is with ``cpus`` None."""
    if cpus is None:
        return list(cmd)
    return ["taskset", "--cpu-list", ",".join(str(c) for c in sorted(cpus)), *cmd]


def split_cpus(n_server: int = 1) -> tuple[list[int], list[int]] | None:
    """The usable CPUs split into the server's (the first ``n_server``) and the load
    generator's (the rest); None with fewer than ``n_server`` + 1."""
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(usable) <= n_server:
        return None
    return usable[:n_server], usable[n_server:]


def wait_http(
    port: int, deadline: float = 20.0, proc: subprocess.Popen[bytes] | None = None, path: str = "/"
) -> None:
    """Poll ``GET path`` until the server answers 200 or ``deadline`` seconds pass.

    Raises ServerError on timeout, or early if ``proc`` exits meanwhile.
    """
    end = time.monotonic() + deadline
    last = "no attempt"
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"server exited with status {proc.returncode} before answering HTTP")
        conn = http.client.HTTPConnection(HOST, port, timeout=2.0)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return
            last = f"HTTP {resp.status}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        time.sleep(0.1)
    raise ServerError(f"no HTTP 200 on port {port} within {deadline:g}s (last: {last})")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM the server's process group, SIGKILL it after ``timeout``; returns the exit status."""
    pgid = proc.pid  # start_server made it a session (and group) leader
    if proc.poll() is None:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + timeout
    try:
        proc.wait(timeout=max(0.0, end - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    while time.monotonic() < end:  # give orphaned workers of the group the rest of the deadline
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        pass
    return proc.returncode


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unparsable wrk duration {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/sec, latency percentiles (ms) and error counts from wrk's text output."""
    res: dict[str, Any] = {
        "rps": None,
        "requests": None,
        "latency_ms": {},
        "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non_2xx_3xx": 0},
    }
    if m := re.search(r"Requests/sec:\s+([\d.]+)", output):
        res["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in ([\d.]+\w+)", output):
        res["requests"] = int(m.group(1))
    if m := re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", output):
        res["latency_ms"].update(avg=_ms(m.group(1)), stdev=_ms(m.group(2)), max=_ms(m.group(3)))
    for pct, value in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+\w+)\s*$", output, re.M):
        res["latency_ms"][f"p{float(pct):g}"] = _ms(value)
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        res["errors"].update(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        res["errors"]["non_2xx_3xx"] = int(m.group(1))
    res["errors_total"] = sum(res["errors"].values())
    return res


def wrk_command(
    url: str, connections: int, duration: int, threads: int = 1, new_connection: bool = False
) -> list[str]:
    extra = ["-H", "Connection: close"] if new_connection else []
    return ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", *extra, url]


def run_wrk(
    url: str,
    connections: int = 64,
    duration: int = 10,
    threads: int = 1,
    new_connection: bool = False,
    cpus: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run wrk (bounded: killed ``duration`` + 30 s in; on ``cpus`` only when given) and return
    parse_wrk's dict plus the command."""
    if not url.startswith(f"http://{HOST}:"):
        raise ValueError(f"refusing to load anything but {HOST}: {url}")
    cmd = pinned(wrk_command(url, connections, duration, threads, new_connection), cpus)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    res = parse_wrk(proc.stdout)
    if res["rps"] is None:
        raise RuntimeError(f"could not parse wrk output:\n{proc.stdout}")
    return {**res, "command": " ".join(cmd), "raw": proc.stdout}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(cmd: Sequence[str], cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10, check=False, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    lines = (p.stdout + p.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def _build_kind(repo: Path) -> str:
    """Whether the servers run prefork_lb's per-request modules compiled (prefork_lb/compiled.py)."""
    probe = (
        "import importlib, prefork_lb.compiled as c\n"
        "for n in c.MODULES: importlib.import_module(n)\n"
        "print(len(c.compiled_modules()), len(c.MODULES))"
    )
    got = _version([sys.executable, "-c", probe], cwd=repo).split()
    if len(got) != 2:
        return "unknown"
    done, listed = got
    if done == "0":
        return "pure Python (no mypyc extension modules, or PREFORK_LB_PURE_PYTHON set)"
    return f"mypyc: {done} of {listed} per-request modules compiled"


def machine_info() -> dict[str, Any]:
    """Where and with what the benchmark ran: CPU, cores, kernel, python, packages, wrk, git commit.

    ``git_commit`` gets ``-dirty`` when prefork_lb/ differs from it (untracked files included).
    """
    repo = Path(__file__).resolve().parent.parent
    pkgs: dict[str, str] = {}
    for name in PACKAGES:
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            init = repo / name / "__init__.py"
            m = re.search(r'__version__ = "([^"]+)"', init.read_text()) if init.exists() else None
            pkgs[name] = f"{m.group(1)} (source tree)" if m else "not installed"
    commit = _version(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", str(repo), "status", "--porcelain", "--", "prefork_lb"])
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "packages": pkgs,
        "prefork_lb_build": _build_kind(repo),
        "wrk": _version(["wrk", "--version"]).split(" Copyright")[0],
        "git_commit": commit + ("-dirty" if dirty not in ("", "unknown") else ""),
    }


def machine_slug(info: Mapping[str, Any]) -> str:
    """A short file-name-safe machine summary, e.g. ``2cpu-intel-xeon-processor``."""
    model = re.sub(r"\((r|tm)\)|cpu|@.*$", "", str(info["cpu_model"]).lower())
    model = re.sub(r"[^a-z0-9]+", "-", model).strip("-")[:40].strip("-")
    return f"{info['cpus_usable']}cpu-{model or 'unknown'}"


def fmt(value: float | None, spec: str) -> str:
    """A table cell: ``value`` formatted, or "-" when there is none."""
    return "-" if value is None else format(value, spec)


def log_tail(path: Path, n: int = 12) -> list[str]:
    """The last ``n`` lines of a log file (none if it does not exist)."""
    return path.read_text(errors="replace").strip().splitlines()[-n:] if path.exists() else []


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = [f"| {' | '.join(c.ljust(w) for c, w in zip(r, widths, strict=True))} |" for r in cells]
    fmt.insert(1, f"|{'|'.join('-' * (w + 2) for w in widths)}|")
    return "\n".join(fmt)


def report_markdown(meta: Mapping[str, Any], table: str) -> str:
    """The shared report layout: title, machine, parameters, commands, notes, then ``table``."""
    m = meta["machine"]
    lines = [
        f"# {meta.get('title', 'Benchmark')}",
        "",
        f"- date (UTC): {m['date_utc']}",
        f"- machine: {m['cpu_model']}, {m['cpus_usable']} usable CPUs ({m['cpu_count']} online), "
        f"{m['kernel']}, host `{m['hostname']}`",
        f"- python: {m['python']}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- prefork_lb build: {m.get('prefork_lb_build', 'unknown')}",
        f"- load generator: {m['wrk']}",
        f"- git commit: {m['git_commit']}",
    ]
    lines += [f"- {k}: {v}" for k, v in meta.get("params", {}).items()]
    if meta.get("commands"):
        lines += ["", "## Commands", ""] + [f"- {k}: `{v}`" for k, v in meta["commands"].items()]
    if meta.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in meta["notes"]]
    return "\n".join([*lines, "", "## Results", "", table, ""])


def write_results(
    name: str,
    rows: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    table: str | None = None,
    results_dir: Path = RESULTS_DIR,
) -> tuple[Path, Path]:
    """Write ``<UTC date>-<name>-<machine>.md`` and a .json holding ``meta`` and ``rows``.

    ``meta`` needs ``machine`` (machine_info()); ``title``, ``params``, ``commands`` and
    ``notes`` are optional.  ``table`` defaults to all scalar row fields.  An existing
    result is never overwritten: a ``-2``, ``-3``... suffix is added.
    """
    if table is None:
        keys = [k for k, v in (rows[0].items() if rows else ()) if not isinstance(v, (dict, list))]
        table = markdown_table(keys, [[r.get(k, "") for k in keys] for r in rows])
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{str(meta['machine']['date_utc'])[:10]}-{name}-{machine_slug(meta['machine'])}"
    base, n = stem, 1
    while (results_dir / f"{base}.md").exists() or (results_dir / f"{base}.json").exists():
        n += 1
        base = f"{stem}-{n}"
    md, js = results_dir / f"{base}.md", results_dir / f"{base}.json"
    md.write_text(report_markdown(meta, table))
    js.write_text(json.dumps({"meta": meta, "rows": list(rows)}, indent=2, default=str) + "\n")
    return md, js


class Scraper:
    """GET /metrics every ``interval`` seconds in a thread, as Prometheus would (counted)."""

    def __init__(self, port: int, interval: float) -> None:
        self.port = port
        self.interval = interval
        self.scrapes = 0
        self.failures = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/metrics")
                resp = conn.getresponse()
                resp.read()
                conn.close()
                self.scrapes += resp.status == 200
                self.failures += resp.status != 200
            except (OSError, http.client.HTTPException):
                self.failures += 1

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of ``pid`` and each of its descendants, by process
    title (a prefork_lb child's role: ``prefork_lb: worker 0 ...``, ``prefork_lb: admin``);
    the CPU per request of a measured window is the difference of two of these."""
    import psutil

    out: dict[str, float] = {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for proc in procs:
        try:
            times = proc.cpu_times()
            title = " ".join(proc.cmdline()).strip() or str(proc.pid)
        except psutil.Error:
            continue
        key = f"{proc.pid} {title[:60]}"
        out[key] = times.user + times.system
    return out


def cpu_per_request(
    before: Mapping[str, float], after: Mapping[str, float], requests: int
) -> dict[str, float]:
    """Milliseconds of CPU per 1,000 requests between two :func:`tree_cpu` snapshots: in all the
    server's processes (``total``), in its workers (``workers``) and in its admin process
    (``admin``)."""
    if requests <= 0:
        return {}
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    scale = 1e6 / requests  # seconds per request -> ms per 1,000 requests

    def pick(word: str) -> float:
        return round(scale * sum(v for k, v in delta.items() if word in k), 3)

    return {
        "total": round(scale * sum(delta.values()), 3),
        "workers": pick(": worker"),
        "admin": pick(": admin"),
    }
