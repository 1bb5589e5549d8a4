"""The master's choice of worker class: the WSGI worker (gevent) or the ASGI worker (asyncio).

The master never imports the app, so under ``--interface auto`` it cannot know which the app
is; the worker that imports it finds out (prefork_lb.asgi.detect says why there). The master
starts the class it last learned (WSGI at first); a worker that finds the other interface
exits :data:`prefork_lb.child.EXIT_WRONG_INTERFACE` before it is ready, and :meth:`wrong`
switches the class for every later start. An app given as an object (``prefork_lb.run(app)``)
is detected here at once: the master holds it already.

Invariant: the choice only flips on the word of a worker started with the current class (one
started before a flip says nothing new), and at most :data:`MAX_FLIPS` times without a worker
of the chosen class getting ready in between: an app whose shape changes on every import
stops the master with one line instead of a respawn loop.
"""

from __future__ import annotations

import logging
from typing import Any

from prefork_lb.asgi.detect import ASGI, WSGI, resolve
from prefork_lb.child import EXIT_WRONG_INTERFACE

__all__ = ["EXIT_WRONG_INTERFACE", "MAX_FLIPS", "InterfaceChoice"]

log = logging.getLogger("prefork_lb.error")

MAX_FLIPS = 2


class InterfaceChoice:
    def __init__(self, cfg: Any) -> None:
        self.setting = "auto"
        self.current = WSGI
        self.flips = 0
        self.route: str | None = None  # the pool's mount (prefork_lb.pools), named in the log
        self.reconfigure(cfg)

    def reconfigure(self, cfg: Any) -> None:
        """The settings (at start, or a HUP's): an explicit --interface decides; auto keeps
        what was learned (the reload's workers tell if the app changed)."""
        self.setting = cfg.interface
        if self.setting in (WSGI, ASGI):
            self.current = self.setting
        elif cfg.app_object is not None:
            try:
                self.current = resolve(cfg.app_object, cfg.app_uri, "auto").interface
            except Exception:
                self.current = WSGI  # the worker says why in one line, as for a path
        self.flips = 0

    def for_slot(self, slot: int) -> InterfaceChoice:
        """The choice for a worker slot's process: this one (per pool with --mount:
        prefork_lb.pools)."""
        return self

    def cfg_for(self, slot: int, cfg: Any) -> Any:
        """The config a slot's worker gets: ``cfg`` (its pool's with --mount)."""
        return cfg

    def child_class(self) -> type:
        """The class of the next worker (imported in the child, after the fork)."""
        if self.current == ASGI:
            from prefork_lb.asgi.child import AsgiWorkerChild

            return AsgiWorkerChild
        from prefork_lb.worker.child import WorkerChild

        return WorkerChild

    def wrong(self, started_as: str) -> bool:
        """A worker started as ``started_as`` found the other interface: True, the class is
        switched (or was already, on another worker's word); False when it flipped too often
        (the master stops as for a failed boot)."""
        if started_as != self.current:
            return True
        if self.flips >= MAX_FLIPS:
            if self.route is None:
                log.error("The app's interface changes from one import to the next; set --interface")
            else:
                log.error(
                    "The app of --mount %s changes its interface from one import to the next; "
                    "set interface= in its --mount",
                    self.route,
                )
            return False
        self.flips += 1
        self.current = ASGI if started_as == WSGI else WSGI
        whose = "The app" if self.route is None else f"The app of --mount {self.route}"
        log.info(
            "%s is an %s application: starting %s workers", whose, self.current.upper(), self.current.upper()
        )
        return True

    def learned(self) -> dict[str, str]:
        """Each pool's route and the interface its workers are started with ({} without --mount)."""
        return {}

    def wrong_in(self, slot: int, started_as: str) -> bool:
        """:meth:`wrong`, said by the worker of ``slot`` (its pool's choice with --mount)."""
        return self.for_slot(slot).wrong(started_as)

    def ready(self, interface: str) -> None:
        """A worker of ``interface`` got ready: the flips so far were the app telling its shape."""
        if interface == self.current:
            self.flips = 0
