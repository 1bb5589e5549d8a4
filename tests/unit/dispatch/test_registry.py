"""The registry of dispatch modes: names in order, a class per name, light to import."""

from __future__ import annotations

import subprocess
import sys

from prefork_lb import dispatch
from prefork_lb.config import build


def test_every_name_maps_to_its_class() -> None:
    assert dispatch.DISPATCH_MODES == ("reuseport", "shared", "handoff", "proxy")
    for name, cls in dispatch.DISPATCH.items():
        assert cls.name == name
        cfg = build({"dispatch": name}, environ={}, app_uri="x:app")
        assert type(dispatch.make(cfg)) is cls


def test_the_registry_imports_neither_the_arbiter_nor_gevent() -> None:
    code = (
        "import sys, prefork_lb.dispatch\n"
        "bad = [m for m in ('gevent', 'prefork_lb.arbiter', 'prefork_lb.supervisor') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
