"""WebSocket echo load generator for bench/asgi.py (run in its own process).

Usage: python -m bench.ws_client --port PORT [--clients 64] [--duration 5] [--size 64]
                                 [--max-messages 1000000] [--path /ws]

``--clients`` connections to ws://127.0.0.1:PORT/PATH (the ``websockets`` asyncio client,
permessage-deflate off) all open first; then each one loops: send a ``--size``-byte text
message, wait for its echo, check it is the same, until ``--duration`` seconds pass or it has
done ``--max-messages`` round trips. One JSON object on stdout: round trips, messages per second
(round trips / measured seconds), round-trip p50/p99 in ms, errors by kind, and this process's
own CPU seconds (on a small machine the client competes with the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import Any

from websockets.asyncio.client import connect


async def one_client(
    url: str,
    start: asyncio.Event,
    end_at: list[float],
    args: argparse.Namespace,
    rtts: list[float],
    errors: dict[str, int],
    ready: list[int],
) -> int:
    done = 0
    payload = "x" * args.size
    try:
        async with connect(
            url, compression=None, proxy=None, open_timeout=10, ping_interval=None, max_size=2**20
        ) as ws:
            ready[0] += 1
            await start.wait()
            perf = time.perf_counter
            while done < args.max_messages and perf() < end_at[0]:
                t0 = perf()
                await ws.send(payload)
                echo = await asyncio.wait_for(ws.recv(), 10.0)
                rtts.append(perf() - t0)
                if echo != payload:
                    errors["wrong_echo"] = errors.get("wrong_echo", 0) + 1
                    break
                done += 1
    except Exception as exc:  # counted by kind: the report says what went wrong
        kind = type(exc).__name__
        errors[kind] = errors.get(kind, 0) + 1
    return done


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{args.port}{args.path}"
    start = asyncio.Event()
    end_at = [float("inf")]
    rtts: list[float] = []
    errors: dict[str, int] = {}
    ready = [0]
    tasks = [
        asyncio.create_task(one_client(url, start, end_at, args, rtts, errors, ready))
        for _ in range(args.clients)
    ]
    open_deadline = time.monotonic() + 15
    while ready[0] + sum(errors.values()) < args.clients and time.monotonic() < open_deadline:
        await asyncio.sleep(0.01)  # polling the connection count, bounded by the deadline
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    end_at[0] = t0 + args.duration
    start.set()
    counts = await asyncio.gather(*tasks)
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    rtts.sort()

    def pct(p: float) -> float | None:
        return round(1000 * rtts[min(len(rtts) - 1, int(p * len(rtts)))], 3) if rtts else None

    total = sum(counts)
    return {
        "clients": args.clients,
        "connected": ready[0],
        "round_trips": total,
        "seconds": round(seconds, 3),
        "messages_per_s": round(total / seconds, 1) if seconds > 0 else None,
        "rtt_p50_ms": pct(0.50),
        "rtt_p99_ms": pct(0.99),
        "errors": errors,
        "client_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 3),
        "size": args.size,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/ws")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=64, help="bytes of each text message")
    ap.add_argument("--max-messages", type=int, default=1_000_000, help="round trips per client at most")
    args = ap.parse_args(argv)
    if not (
        1 <= args.clients <= 10_000 and 0 < args.duration <= 600 and args.size >= 1 and args.max_messages >= 1
    ):
        ap.error("--clients 1..10000, --duration 0..600 s, --size and --max-messages >= 1")
    try:
        import uvloop  # the same event loop as the servers under test, where it is installed

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    print(json.dumps(run(main_async(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
