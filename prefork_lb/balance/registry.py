"""Strategies by short name: what ``--strategy`` and the proxy's configuration name.

``make(name, **options)`` builds one; options are the strategy's keyword arguments (``clock``,
``slow_start``, ``decay``, ``default_latency`` for all; ``rng``, ``vnodes``, ``factor``,
``secret``, ``inner``... for some). An unknown name is a ValueError that lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefork_lb.balance.base import Strategy
from prefork_lb.balance.hashing import ConsistentHash
from prefork_lb.balance.sticky import sticky_class
from prefork_lb.balance.strategies import (
    LeastConnections,
    LeastLatency,
    PowerOfTwoChoices,
    RoundRobin,
    WeightedRandom,
    WeightedRoundRobin,
)

CLASSES: dict[str, type[Strategy[Any]]] = {
    cls.name: cls
    for cls in (
        RoundRobin,
        WeightedRoundRobin,
        LeastConnections,
        WeightedRandom,
        PowerOfTwoChoices,
        LeastLatency,
        ConsistentHash,
    )
}


def sticky(inner: str | type[Strategy[Any]] = "least_connections", **options: Any) -> Strategy[Any]:
    """Cookie affinity in front of ``inner`` (a name or a class); ``options`` go to both:
    ``secret``, ``cookie_length`` and the inner strategy's own."""
    if isinstance(inner, str):
        if inner not in CLASSES:
            raise ValueError(
                f"unknown inner strategy for sticky: {inner!r} (choose from {', '.join(CLASSES)})"
            )
        inner = CLASSES[inner]
    return sticky_class(inner)(**options)


STRATEGIES: dict[str, Callable[..., Strategy[Any]]] = {**CLASSES, "sticky": sticky}


def make(name: str, **options: Any) -> Strategy[Any]:
    """A new strategy by short name, e.g. ``make("least_connections", slow_start=30)``."""
    factory = STRATEGIES.get(name)
    if factory is None:
        raise ValueError(f"unknown balancing strategy {name!r} (choose from {', '.join(STRATEGIES)})")
    return factory(**options)
