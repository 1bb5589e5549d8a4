"""Balancing strategies as pure objects (no I/O): ``pick()``, ``on_start()``, ``on_finish()``.

Shared by the handoff dispatcher (which worker slot gets a new connection) and the proxy (which
backend gets a request). Start with :func:`make` and :data:`STRATEGIES`; the contract is
:class:`Strategy`.
"""

from prefork_lb.balance.base import Member, MemberStats, Strategy
from prefork_lb.balance.hashing import ConsistentHash
from prefork_lb.balance.latency import PeakEwma
from prefork_lb.balance.registry import CLASSES, STRATEGIES, make, sticky
from prefork_lb.balance.sticky import Sticky, sticky_class
from prefork_lb.balance.strategies import (
    LeastConnections,
    LeastLatency,
    PowerOfTwoChoices,
    RoundRobin,
    WeightedRandom,
    WeightedRoundRobin,
)

__all__ = [
    "CLASSES",
    "STRATEGIES",
    "ConsistentHash",
    "LeastConnections",
    "LeastLatency",
    "Member",
    "MemberStats",
    "PeakEwma",
    "PowerOfTwoChoices",
    "RoundRobin",
    "Sticky",
    "Strategy",
    "WeightedRandom",
    "WeightedRoundRobin",
    "make",
    "sticky",
    "sticky_class",
]
