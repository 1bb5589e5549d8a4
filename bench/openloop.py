"""An open-loop HTTP load generator: requests leave on a fixed schedule, whatever the server does.

wrk is closed-loop: a connection sends its next request only after the last answer, so a server
that stalls is simply sent less, and the requests it would have delayed never happen
("coordinated omission"). Here arrivals follow a Poisson process at a fixed rate, each request
on a new connection, and latency is measured from the moment the request was *meant* to be
sent. Late sending (a busy generator) therefore counts against the server's numbers, never for
them; the report includes how late the generator itself was (``send_lag_p99_ms``).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    latencies: dict[str, list[float]] = field(default_factory=dict)  # path -> seconds
    errors: dict[str, int] = field(default_factory=dict)
    send_lag: list[float] = field(default_factory=list)
    sent: int = 0

    def pct(self, path: str, q: float) -> float:
        xs = sorted(self.latencies.get(path, []))
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _one(host: str, port: int, path: str, intended: float, res: Result, timeout: float) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            data = await asyncio.wait_for(reader.read(), timeout)
        finally:
            writer.close()
        if not data.startswith(b"HTTP/1.1 200"):
            raise ValueError(data[:12].decode("latin-1", "replace") or "empty response")
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        kind = type(exc).__name__
        res.errors[kind] = res.errors.get(kind, 0) + 1
        return
    res.latencies.setdefault(path, []).append(time.perf_counter() - intended)


async def _run(
    host: str,
    port: int,
    rate: float,
    duration: float,
    mix: list[tuple[str, float]],
    seed: int,
    timeout: float,
) -> Result:
    rng = random.Random(seed)
    res = Result()
    paths = [p for p, _ in mix]
    weights = [w for _, w in mix]
    tasks = []
    start = time.perf_counter() + 0.05
    t = start
    end = start + duration
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            break
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        res.send_lag.append(max(0.0, time.perf_counter() - t))
        path = rng.choices(paths, weights)[0]
        tasks.append(asyncio.create_task(_one(host, port, path, t, res, timeout)))
        res.sent += 1
    await asyncio.gather(*tasks)
    return res


def run(
    host: str,
    port: int,
    rate: float,
    duration: float,
    mix: list[tuple[str, float]],
    seed: int = 1,
    timeout: float = 10.0,
) -> Result:
    """Send about rate x duration requests (bounded) and collect latencies by path."""
    return asyncio.run(_run(host, port, rate, duration, mix, seed, timeout))
