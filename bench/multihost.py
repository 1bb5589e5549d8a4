"""Multi-host on one machine: a host cut off the network under open-loop load. Run as root:
python bench/multihost.py

The rig of tests/multihost.py: three network namespaces joined to the root namespace by veth
pairs, ``python -m prefork_lb tests.apps_multihost:app -w 1`` in each, the standalone proxy on
127.0.0.1 in front (round robin, health checks every 0.2 s, fall 2, rise 2, the settings of
tests.multihost.CUT_FLAGS). A fixed-rate load (a new connection per GET, latency measured from
the scheduled time) runs while host 0's link goes down (``ip link set ... down``) and, after a
while, up again. Recorded per scenario: failed GETs, p50/p99/max before, during (scheduled
between the cut and the restore) and after the cut, the proxy's retry count, and how long the
health checks took to see the host go and come back (observed, not a target).

Scenarios: ``retry-on-timeout`` (CUT_FLAGS as the test uses them) and ``no-retry-on-timeout``
(the same with --retry-on-timeout false: a GET in flight on the host when it is cut, or sent
on a kept-alive connection before it is ejected, waits --upstream-timeout and gets 504).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from tests.helpers import wait_for  # noqa: E402
from tests.multihost import CUT_FLAGS, OpenLoop, Rig, Sample, rig  # noqa: E402

SCENARIOS = {"retry-on-timeout": (), "no-retry-on-timeout": ("--retry-on-timeout", "false")}


def pct(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 2) if xs else None


def phase(samples: list[Sample], name: str) -> dict[str, Any]:
    ok = [s.latency for s in samples if s.status == 200]
    return {
        f"{name}_n": len(samples),
        f"{name}_p50_ms": pct(ok, 0.5),
        f"{name}_p99_ms": pct(ok, 0.99),
        f"{name}_max_ms": pct(ok, 1.0),
    }


def run_scenario(r: Rig, name: str, rate: float, seconds: float, cut_s: float) -> dict[str, Any]:
    p = r.proxy("--strategy", "round_robin", *SCENARIOS[name])
    cut = r.hosts[0]
    backend = r.backend(cut)
    count = int(rate * seconds)
    load = OpenLoop(p.port, rate=rate, count=count)
    wait_for(lambda: load.sent_about() >= rate * 2, 30.0, "2 s of load")
    t_cut = time.monotonic()
    cut.cut()
    wait_for(lambda: p.backend_health(backend) is False, 30.0, "the cut host down", interval=0.01)
    down_s = time.monotonic() - t_cut
    wait_for(lambda: time.monotonic() >= t_cut + cut_s, cut_s + 5, "the cut's length", interval=0.05)
    t_back = time.monotonic()
    cut.restore()
    wait_for(lambda: p.backend_health(backend) is True, 30.0, "the host back up", interval=0.01)
    up_s = time.monotonic() - t_back
    samples = load.done(120.0)
    stats = p.stats()
    p.stop()
    failed = [s for s in samples if s.status != 200]
    return {
        "scenario": name,
        "requests": len(samples),
        "failed": len(failed),
        "failed_kinds": sorted({str(s.status or s.error) for s in failed}),
        **phase([s for s in samples if s.at < t_cut], "before"),
        **phase([s for s in samples if t_cut <= s.at < t_back], "during"),
        **phase([s for s in samples if s.at >= t_back], "after"),
        "retries": sum(b["retries"] for b in stats["backends"]),
        "seen_down_s": round(down_s, 3),
        "back_up_s": round(up_s, 3),
        "after_on_cut_host": sum(1 for s in samples if s.at >= t_back and s.backend == backend),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--cut", type=float, default=4.0, help="seconds the host stays cut")
    ap.add_argument("--scenario", action="append", choices=list(SCENARIOS))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, rig(Path(tmp)) as r:
        for name in args.scenario or list(SCENARIOS):
            row = run_scenario(r, name, args.rate, args.seconds, args.cut)
            print(row, flush=True)
            rows.append(row)
    keys = ["scenario", "requests", "failed", "before_p99_ms", "during_n", "during_p50_ms", "during_p99_ms"]
    keys += ["during_max_ms", "after_p99_ms", "retries", "seen_down_s", "back_up_s", "after_on_cut_host"]
    meta = {
        "title": "Multi-host: one host of three cut off the network under open-loop load",
        "machine": harness.machine_info(),
        "params": {
            "rate": f"{args.rate} req/s, {args.seconds} s, a new connection per GET",
            "cut": f"host 0's link down at 2 s, up {args.cut} s later",
            "proxy": " ".join(CUT_FLAGS) + " --strategy round_robin",
            "hosts": "3 network namespaces, prefork_lb -w 1 each",
        },
        "commands": {"run": "sudo python bench/multihost.py"},
        "notes": [
            "during = requests scheduled between the cut and the restore; latency from the scheduled time",
            "seen_down_s / back_up_s: from the link change until /lb-health said so (observed, not asserted)",
        ],
    }
    table = harness.markdown_table(keys, [[row[k] for k in keys] for row in rows])
    md, js = harness.write_results("multihost", rows, meta, table)
    print(md.read_text())
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
