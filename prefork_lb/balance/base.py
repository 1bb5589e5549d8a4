"""The member bookkeeping every balancing strategy shares; no I/O, no threads, no timers.

A :class:`Strategy` holds :class:`Member` objects - worker slots for the handoff dispatcher,
backend addresses for the proxy - and :meth:`Strategy.pick` answers the key of the member the
next connection or request should go to, or ``None`` when no member is eligible. The caller
reports work with :meth:`~Strategy.on_start` and :meth:`~Strategy.on_finish`, or sets the load
it reads elsewhere (a scoreboard) with :meth:`~Strategy.set_load`.

States: health (:meth:`~Strategy.mark_up` / :meth:`~Strategy.mark_down`) and draining
(:meth:`~Strategy.drain` / :meth:`~Strategy.undrain`) are separate, like HAProxy's operational
and administrative states, so a health check that keeps marking a backend up does not undo an
operator's drain. A member is *eligible* - can be picked - when it is up and not draining.
Marking a member up that is up (the dispatcher does so on every scoreboard read) changes nothing.

Invariants, kept by every method here and relied on by the subclasses' ``pick``:

* ``_eligible`` lists exactly the eligible members, in the order they were added, and each
  one's ``pos`` is its index there;
* ``_load`` is the sum of ``in_flight`` over the eligible members, ``_weight`` the sum of their
  effective weights and ``_uniform`` tells whether those are all equal;
* ``in_flight`` never goes below zero;
* the effective weight ``eff`` is ``weight``, except during slow start: from the moment a member
  is added or marked up it grows linearly from a tenth of ``weight`` to all of it over
  ``slow_start`` seconds. It is brought up to date at pick time from the injected clock.

Time only comes from the injected ``clock`` and is read only when it matters: picks while a
member ramps up, least_latency's picks, latency samples and :meth:`~Strategy.snapshot`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypedDict, TypeVar

from prefork_lb.balance.latency import PeakEwma

K = TypeVar("K", bound=Hashable)

RAMP_FLOOR = 0.1  # a member starting slow start gets this fraction of its weight


class MemberStats(TypedDict):
    key: Any
    weight: int
    effective_weight: float
    state: str
    in_flight: int
    picks: int
    failures: int
    latency: float | None


class Member(Generic[K]):
    """One target: a worker slot or a backend address. Read its fields; change them through
    the strategy, which keeps its totals in step."""

    __slots__ = (
        "key",
        "weight",
        "eff",
        "up",
        "draining",
        "eligible",
        "pos",
        "in_flight",
        "picks",
        "failures",
        "ewma",
        "ewma_at",
        "estimate",
        "up_since",
        "current",
    )

    def __init__(self, key: K, weight: int = 1) -> None:
        self.key = key
        self.weight = weight
        self.eff: float = weight  # effective weight: weight scaled by the slow-start ramp
        self.up = True
        self.draining = False
        self.eligible = True
        self.pos = 0  # index in the strategy's eligible list
        self.in_flight = 0
        self.picks = 0
        self.failures = 0
        self.ewma: float | None = None  # latency estimate right after the last sample (seconds)
        self.ewma_at = 0.0
        self.estimate = 0.0  # latency estimate as of the strategy's last refresh
        self.up_since = 0.0
        self.current: float = 0  # smooth weighted round robin's running weight

    @property
    def state(self) -> str:
        """``"up"``, ``"down"`` or ``"draining"`` (a draining member that fails is ``"down"``)."""
        if not self.up:
            return "down"
        return "draining" if self.draining else "up"

    def __repr__(self) -> str:
        return (
            f"<Member {self.key!r} weight={self.weight} {self.state} in_flight={self.in_flight} "
            f"picks={self.picks}>"
        )


def check_weight(weight: int) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        raise ValueError(f"weight must be an integer >= 1, not {weight!r}")
    return weight


class Strategy(Generic[K]):
    """Base class: members, their states and load. Subclasses implement :meth:`pick`.

    Options every strategy takes (keyword only): ``clock`` (seconds, default
    ``time.monotonic``), ``slow_start`` (seconds of weight ramp for a member that comes up; 0:
    none), ``decay`` (time constant of the latency estimates, default 10 s) and
    ``default_latency`` (the estimate when no member has a sample yet, default 0.1 s).
    """

    name = ""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        slow_start: float = 0.0,
        decay: float = 10.0,
        default_latency: float = 0.1,
    ) -> None:
        if not slow_start >= 0:
            raise ValueError(f"slow_start must be >= 0 seconds, not {slow_start!r}")
        self._clock = clock
        self.slow_start = float(slow_start)
        self._ewma = PeakEwma(decay, default_latency)
        self._members: dict[K, Member[K]] = {}
        self._eligible: list[Member[K]] = []
        self._ramping: list[Member[K]] = []
        self._load = 0
        self._weight: float = 0
        self._uniform = True

    # -- picking (the hot path, in the subclasses) ----------------------------------------------

    def pick(self, hint: Any = None) -> K | None:
        """The key of the member to use next, or ``None`` when none is eligible.

        ``hint`` is what the strategy keys on, where it keys on anything: the client address
        for ``hash``, the affinity cookie for ``sticky``. The others ignore it.
        """
        raise NotImplementedError

    def on_start(self, key: K) -> None:
        """Work was sent to ``key`` (call it right after :meth:`pick`, so the next pick sees it)."""
        m = self._members[key]
        m.in_flight += 1
        if m.eligible:
            self._load += 1

    def on_finish(self, key: K, latency: float | None = None, ok: bool = True) -> None:
        """Work on ``key`` ended after ``latency`` seconds (if known); ``ok=False``: it failed.

        A key that is no longer a member (removed while the work was in flight) is ignored.
        """
        m = self._members.get(key)
        if m is None:
            return
        if m.in_flight:
            m.in_flight -= 1
            if m.eligible:
                self._load -= 1
        if not ok:
            m.failures += 1
        if latency is not None or not ok:
            now = self._clock()
            ewma = self._ewma
            ewma.observe(m, latency or 0.0, ok, now)
            if now >= ewma.next_refresh:
                ewma.refresh(self._members.values(), now)

    def set_load(self, key: K, in_flight: int, latency: float | None = None) -> None:
        """Set ``key``'s in-flight count (and latency estimate, seconds) read from elsewhere."""
        if in_flight < 0:
            raise ValueError(f"in_flight must be >= 0, not {in_flight!r}")
        m = self._members[key]
        if m.eligible:
            self._load += in_flight - m.in_flight
        m.in_flight = in_flight
        if latency is not None:
            self._ewma.set(m, latency, self._clock())

    # -- membership and states -------------------------------------------------------------------

    def add(self, key: K, weight: int = 1) -> None:
        """Add an up member (ramping up if ``slow_start`` is set). ValueError if ``key`` is one."""
        if key in self._members:
            raise ValueError(f"{key!r} is already a member")
        m = Member(key, check_weight(weight))
        m.estimate = self._ewma.neutral
        self._members[key] = m
        self._start_ramp(m)
        self._added(m)
        self._rebuild()

    def remove(self, key: K) -> None:
        """Forget ``key`` at once (KeyError if unknown); :meth:`drain` first to let work finish."""
        m = self._members.pop(key)
        if m in self._ramping:
            self._ramping.remove(m)
        self._removed(m)
        self._rebuild()

    def set_weight(self, key: K, weight: int) -> None:
        m = self._members[key]
        m.weight = check_weight(weight)
        self._weight_set(m)
        if m in self._ramping:
            self._ramp(self._clock())
        else:
            m.eff = m.weight
            self._reweigh()

    def mark_up(self, key: K) -> None:
        """``key`` is healthy: eligible again unless draining; starts slow start if it was down."""
        m = self._members[key]
        if not m.up:
            m.up = True
            self._start_ramp(m)
            self._rebuild()

    def mark_down(self, key: K) -> None:
        """``key`` is unhealthy (or full): not picked until :meth:`mark_up`."""
        m = self._members[key]
        if m.up:
            m.up = False
            self._rebuild()

    def drain(self, key: K) -> None:
        """No new work for ``key``; work in flight finishes and is still counted."""
        m = self._members[key]
        if not m.draining:
            m.draining = True
            self._rebuild()

    def undrain(self, key: K) -> None:
        m = self._members[key]
        if m.draining:
            m.draining = False
            self._rebuild()

    # -- reading --------------------------------------------------------------------------------

    def keys(self) -> list[K]:
        return list(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, key: object) -> bool:
        return key in self._members

    @property
    def members(self) -> Mapping[K, Member[K]]:
        """Read-only view: key -> :class:`Member`."""
        return MappingProxyType(self._members)

    def eligible(self) -> list[K]:
        """Keys that :meth:`pick` may answer now, in the order they were added."""
        return [m.key for m in self._eligible]

    def snapshot(self) -> list[MemberStats]:
        """Per member: key, weight, effective weight, state, in flight, picks, failures and
        latency estimate (seconds; ``None`` before the member's first sample)."""
        now = self._clock()
        if self._ramping:
            self._ramp(now)
        ewma = self._ewma
        if now >= ewma.next_refresh:
            ewma.refresh(self._members.values(), now)
        return [
            MemberStats(
                key=m.key,
                weight=m.weight,
                effective_weight=m.eff,
                state=m.state,
                in_flight=m.in_flight,
                picks=m.picks,
                failures=m.failures,
                latency=None if m.ewma is None else m.estimate,
            )
            for m in self._members.values()
        ]

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {len(self._eligible)}/{len(self._members)} eligible load={self._load}>"
        )

    # -- internals --------------------------------------------------------------------------------

    def _start_ramp(self, m: Member[K]) -> None:
        if self.slow_start > 0:
            m.up_since = self._clock()
            m.eff = m.weight * RAMP_FLOOR
            if m not in self._ramping:
                self._ramping.append(m)

    def _ramp(self, now: float) -> None:
        """Bring the effective weights of ramping members up to date."""
        span = self.slow_start
        still = []
        for m in self._ramping:
            f = (now - m.up_since) / span
            if f >= 1.0:
                m.eff = m.weight
            else:
                m.eff = m.weight * (RAMP_FLOOR + (1 - RAMP_FLOOR) * max(f, 0.0))
                still.append(m)
        self._ramping = still
        self._reweigh()

    def _rebuild(self) -> None:
        """Recompute the eligible list and the totals after a change of membership or state."""
        elig: list[Member[K]] = []
        load = 0
        for m in self._members.values():
            m.eligible = ok = m.up and not m.draining
            if ok:
                m.pos = len(elig)
                elig.append(m)
                load += m.in_flight
        self._eligible = elig
        self._load = load
        self._reweigh()

    def _reweigh(self) -> None:
        elig = self._eligible
        self._weight = sum(m.eff for m in elig)
        self._uniform = len({m.eff for m in elig}) <= 1
        self._changed()

    # Hooks for subclasses; each calls super() so that mixins (Sticky) compose.

    def _added(self, m: Member[K]) -> None:
        """``m`` was just added (before the eligible list is rebuilt)."""

    def _removed(self, m: Member[K]) -> None:
        """``m`` was just removed."""

    def _weight_set(self, m: Member[K]) -> None:
        """``m``'s configured weight changed."""

    def _changed(self) -> None:
        """The eligible list or effective weights changed; ``_weight``/``_uniform`` are current."""
