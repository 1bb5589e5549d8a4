"""Backend lists, health state machines and the retry budget; pure, no I/O.

Everything that depends on time takes an injected ``clock`` (``time.monotonic`` by default) so
tests drive it with a fake one.

* :func:`parse_backends` reads ``--backends`` (``HOST:PORT``, ``[IPV6]:PORT``, ``=WEIGHT``).
* :class:`HealthState`: the active check's rise/fall hysteresis (and a backend not checked yet).
* :class:`PassiveEjector`: takes a backend out after consecutive failures seen on real traffic,
  for longer each time it fails again straight after coming back.
* :class:`RetryBudget`: retries are capped at a fraction of recent requests plus a small floor
  per second, so retries cannot multiply the load on an already failing fleet.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]

# A DNS name or IPv4 address: letters, digits, dots, hyphens (underscores are seen in the wild).
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_DIGITS = re.compile(r"[0-9]{1,9}")  # ASCII only: str.isdigit() also accepts "²"


def parse_backends(spec: str | list[str]) -> list[tuple[str, int, int]]:
    """``"a:80,[::1]:81=3"`` -> ``[("a", 80, 1), ("::1", 81, 3)]`` (IPv6 hosts without brackets).

    A list's items may themselves be comma-separated. Empty items are skipped. Raises
    ValueError naming the bad item for anything else, and for a backend listed twice.
    """
    items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    out: list[tuple[str, int, int]] = []
    seen: set[tuple[str, int]] = set()
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        host, port, weight = _parse_backend(item)
        if (host, port) in seen:
            raise ValueError(f"backend {item!r} is listed twice")
        seen.add((host, port))
        out.append((host, port, weight))
    return out


def _parse_backend(item: str) -> tuple[str, int, int]:
    def bad(why: str) -> ValueError:
        return ValueError(
            f"invalid backend {item!r}: {why} (want HOST:PORT, [IPV6]:PORT, optionally =WEIGHT)"
        )

    addr, eq, w = item.partition("=")
    weight = 1
    if eq:
        if not _DIGITS.fullmatch(w.strip()) or int(w) < 1:
            raise bad("the weight must be an integer >= 1")
        weight = int(w)
    addr = addr.strip()
    if addr.startswith("["):
        close = addr.find("]")
        if close == -1:
            raise bad("missing ']'")
        host = addr[1:close]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
        rest = addr[close + 1 :]
        if not rest.startswith(":"):
            raise bad("missing :PORT")
        port_s = rest[1:]
    else:
        host, colon, port_s = addr.rpartition(":")
        if not colon:
            raise bad("missing :PORT")
        if ":" in host:
            raise bad("write an IPv6 address in brackets")
        if not _HOSTNAME.fullmatch(host):
            raise bad(f"{host!r} is not a host name or address")
    if not _DIGITS.fullmatch(port_s) or not 1 <= int(port_s) <= 65535:
        raise bad("the port must be 1-65535")
    return host, int(port_s), weight


class HealthState:
    """Active-check hysteresis: ``rise`` consecutive passes bring a backend up, ``fall``
    consecutive failures take it down. A result agreeing with the current state resets the
    count, so only an unbroken run flips it.

    ``healthy`` None: not checked yet (a backend added at run time, shown as ``checking``, and
    sent nothing): its first result decides, up or down, with no run needed."""

    __slots__ = ("rise", "fall", "healthy", "streak")

    def __init__(self, rise: int, fall: int, healthy: bool | None = True) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.rise = rise
        self.fall = fall
        self.healthy = healthy
        self.streak = 0  # consecutive results contradicting ``healthy``

    @property
    def checking(self) -> bool:
        """Not checked yet: no result has decided."""
        return self.healthy is None

    def observe(self, ok: bool) -> bool:
        """Record one check result; True when ``healthy`` changed."""
        if self.healthy is None:
            self.healthy = ok
            self.streak = 0
            return True
        if ok == self.healthy:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < (self.rise if ok else self.fall):
            return False
        self.healthy = ok
        self.streak = 0
        return True


MAX_BACKOFF = 8  # an ejection lasts at most 8 x eject_for


class PassiveEjector:
    """Ejects a backend after ``errors`` consecutive failures (connect error, timeout, 5xx)
    within ``window`` seconds.

    Consecutive, not merely "so many per window": a busy backend with a rare failing endpoint
    would otherwise be ejected again and again while serving almost everything fine. A success
    clears the count.

    An ejection lasts ``eject_for`` seconds. A backend that fails again before it has served
    ``errors`` successes in a row since coming back is on trial: a single failure ejects it again,
    for twice as long as the time before (up to 8x). A success streak of ``errors`` ends the
    trial and the doubling.
    """

    __slots__ = ("errors", "window", "base", "clock", "failures", "until", "ejections", "successes")

    def __init__(
        self, *, errors: int = 5, window: float = 10.0, eject_for: float = 10.0, clock: Clock = time.monotonic
    ) -> None:
        if errors < 1:
            raise ValueError("errors must be >= 1")
        self.errors = errors
        self.window = window
        self.base = eject_for
        self.clock = clock
        self.failures: deque[float] = deque(maxlen=errors)  # times of the recent consecutive failures
        self.until = 0.0  # ejected while clock() < until
        self.ejections = 0  # since the last success streak: sets the backoff
        self.successes = 0  # consecutive successes

    @property
    def eject_for(self) -> float:
        """How long the latest ejection lasts (``eject_for`` before any): the engine's timer."""
        return self.base * min(1 << max(self.ejections - 1, 0), MAX_BACKOFF)

    def failure(self) -> bool:
        """Record a failure; True when it ejects the backend (it was not ejected before)."""
        now = self.clock()
        if now < self.until:
            return False  # already out: late answers from before the ejection do not extend it
        self.successes = 0
        if self.ejections:
            return self._eject(now)  # on trial
        failures = self.failures
        failures.append(now)
        if len(failures) == self.errors and now - failures[0] <= self.window:
            return self._eject(now)
        return False

    def eject(self) -> float:
        """Eject now, whatever the count (e.g. a refused connect); returns the duration."""
        self._eject(self.clock())
        return self.eject_for

    def _eject(self, now: float) -> bool:
        self.ejections += 1
        self.until = now + self.eject_for
        self.failures.clear()
        return True

    def success(self) -> None:
        self.failures.clear()
        self.successes += 1
        if self.successes >= self.errors:
            self.ejections = 0

    def ejected(self) -> bool:
        return self.clock() < self.until


class RetryBudget:
    """Allows, over any ``window`` seconds, ``ratio`` x requests + ``min_per_second`` x window
    retries (Finagle's RetryBudget). Time is cut into one-second slots holding each second's
    deposits minus withdrawals; slots older than ``window`` fall off, so an old burst of
    requests cannot pay for retries much later."""

    __slots__ = ("ratio", "floor", "clock", "slots", "nslots", "second", "balance")

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        clock: Clock = time.monotonic,
        window: float = 10.0,
    ) -> None:
        if ratio < 0 or min_per_second < 0:
            raise ValueError("ratio and min_per_second must be >= 0")
        self.ratio = ratio
        self.nslots = max(1, int(window))
        self.floor = min_per_second * self.nslots  # the reserve every window starts with
        self.clock = clock
        self.slots = [0.0] * self.nslots
        self.second = int(clock())
        self.balance = 0.0  # sum(slots)

    def _advance(self) -> int:
        sec = int(self.clock())
        gone = sec - self.second
        if gone > 0:
            slots = self.slots
            n = self.nslots
            for s in range(self.second + 1, self.second + 1 + min(gone, n)):
                slots[s % n] = 0.0
            self.second = sec
            self.balance = sum(slots)  # re-summed: no float drift from += and -=
        return sec % self.nslots

    def on_request(self) -> None:
        i = self._advance()
        self.slots[i] += self.ratio
        self.balance += self.ratio

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        i = self._advance()
        if self.floor + self.balance < 1.0 - 1e-9:  # 5 x 0.2 must make a whole retry
            return False
        self.slots[i] -= 1.0
        self.balance -= 1.0
        return True
