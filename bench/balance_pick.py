"""Micro-benchmark of prefork_lb.balance: microseconds per pick, with its on_start/on_finish.

Usage: python bench/balance_pick.py [--cycles 20000] [--repeat 7] [--no-save]

One *cycle* is what a caller does per connection or request: ``k = s.pick(hint)``,
``s.on_start(k)``, and the ``on_finish(key, latency)`` of the oldest request in flight. Twice as
many requests as members stay in flight, so every member is busy and least_connections and
least_latency scan all members (their worst case; with idle members they stop at the first).
Each figure is the best of ``--repeat`` runs of ``--cycles`` cycles, in microseconds per
cycle, with the harness's own loop cost (measured alone) shown in the first row, not subtracted.
The table goes to stdout and to bench/results/ (.md and .json).
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `bench` and `prefork_lb` importable
    sys.path.insert(0, str(REPO))

from bench import harness  # noqa: E402
from prefork_lb.balance import STRATEGIES, Strategy, make  # noqa: E402

SIZES = (8, 64)
NHINTS = 1024  # a power of two: the hint index wraps with a mask
NOTES = [
    "cycle = pick(hint) + on_start(key) + on_finish(oldest key, latency): the per-connection cost "
    "for the dispatcher, per-request for the proxy.",
    "2 x members requests stay in flight, so every member is busy: least_connections and least_latency "
    "scan all members (with an idle member they stop at the first one).",
    "hints: hash gets one of 1024 client addresses; sticky gets a valid cookie 9 times in 10 and none "
    "1 time in 10 (falls through to least_connections); the others get none.",
    "weighted: weights 1, 2, 3, 1, 2, 3... (round_robin ignores weights). "
    "Equal weights let least_connections and least_latency compare without dividing.",
    "latency samples are 5-50 ms, so least_latency refreshes its estimates every decay/100 = 0.1 s of "
    "real time, i.e. a few times per run.",
    "best of --repeat runs; the harness row is the loop alone (deque, hint list), not subtracted.",
]


def build(name: str, n: int, weighted: bool) -> Strategy[Any]:
    s = make(name)
    for i in range(n):
        s.add(f"10.0.{i // 250}.{i % 250}:8000", 1 + i % 3 if weighted else 1)
    for i, key in enumerate(s.keys()):
        s.on_finish(key, 0.005 + 0.045 * i / n)  # a latency estimate for every member
    return s


def hints_for(name: str, s: Strategy[Any]) -> list[Any]:
    if name == "hash":
        return [f"192.168.{i // 256}.{i % 256}" for i in range(NHINTS)]
    if name == "sticky":
        keys = s.keys()
        cookie_for: Callable[[Any], str] = s.cookie_for  # type: ignore[attr-defined]
        return [None if i % 10 == 9 else cookie_for(keys[i % len(keys)]) for i in range(NHINTS)]
    return [None] * NHINTS


def cycle_runner(s: Strategy[Any] | None, hints: list[Any], cycles: int, depth: int) -> Callable[[], None]:
    """A function doing ``cycles`` cycles with ``depth`` requests in flight."""
    mask = NHINTS - 1
    lat = [0.005 + 0.045 * (i % 7) / 7 for i in range(NHINTS)]
    if s is None:  # the harness alone

        def run_empty() -> None:
            q: deque[Any] = deque([None] * depth)
            for i in range(cycles):
                j = i & mask
                k = hints[j]
                q.append(k)
                _ = q.popleft(), lat[j]

        return run_empty

    pick, start, finish = s.pick, s.on_start, s.on_finish
    q: deque[Any] = deque()
    for i in range(depth):  # fill the pipeline before timing
        k = pick(hints[i & mask])
        start(k)
        q.append(k)

    def run() -> None:
        for i in range(cycles):
            j = i & mask
            k = pick(hints[j])
            start(k)
            q.append(k)
            finish(q.popleft(), lat[j])

    return run


def measure(name: str | None, n: int, weighted: bool, cycles: int, repeat: int) -> float:
    s = build(name, n, weighted) if name else None
    hints = hints_for(name, s) if name and s is not None else [None] * NHINTS
    run = cycle_runner(s, hints, cycles, 2 * n)
    best = min(timeit.repeat(run, number=1, repeat=repeat))
    return best / cycles * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=20_000, help="cycles per timed run")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per figure (the best counts)")
    ap.add_argument("--no-save", action="store_true", help="print the table only")
    args = ap.parse_args(argv)

    columns = [(n, False) for n in SIZES] + [(n, True) for n in SIZES]
    headers = ["strategy"] + [f"{n} {'weighted' if w else 'equal'} (us)" for n, w in columns]
    rows: list[dict[str, Any]] = []
    for name in [None, *STRATEGIES]:
        row: dict[str, Any] = {"strategy": name or "(harness loop only)"}
        for n, w in columns:
            row[f"us_{n}_{'weighted' if w else 'equal'}"] = round(
                measure(name, n, w, args.cycles, args.repeat), 2
            )
        rows.append(row)
        print(
            f"{row['strategy']:>22}: " + "  ".join(f"{v:6.2f}" for k, v in row.items() if k != "strategy"),
            flush=True,
        )
    table = harness.markdown_table(headers, [list(r.values()) for r in rows])
    print()
    print(table)
    if not args.no_save:
        meta = {
            "title": "prefork_lb.balance: microseconds per pick + on_start + on_finish",
            "machine": harness.machine_info(),
            "params": {
                "cycles per run": args.cycles,
                "runs (best counts)": args.repeat,
                "members": ", ".join(map(str, SIZES)),
                "in flight": "2 x members",
            },
            "commands": {"benchmark": " ".join(["python bench/balance_pick.py", *(argv or sys.argv[1:])])},
            "notes": NOTES,
        }
        md, js = harness.write_results("balance-pick", rows, meta, table)
        print(f"\nwrote {md.relative_to(REPO)} and {js.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
