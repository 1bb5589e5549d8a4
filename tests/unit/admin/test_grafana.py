"""contrib/grafana/prefork_lb.json: valid JSON whose queries name only metrics that /metrics
really exposes (checked against a scrape of the collector over a scoreboard built here, with
a proxy that has no backends yet: every family is printed, samples or not)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from prefork_lb import scoreboard as sb
from prefork_lb.admin.metrics import ServerCollector
from prefork_lb.admin.totals import Totals

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "contrib" / "grafana" / "prefork_lb.json"


def exposed_sample_names() -> set[str]:
    board, totals = sb.Scoreboard(4), Totals(4)
    totals.started(1, 0.0)
    i = board.allocate(2, 0)
    board.put(i, sb.STATE, sb.READY)
    w = board.handle(i)
    w.request_started("GET", b"/")
    w.request_finished("GET", 2)
    w.publish()  # what the heartbeat does
    registry = CollectorRegistry(auto_describe=False)
    proxy = {"stats": {"requests": 1, "backends": []}, "health": {"backends": []}, "metrics": {}}
    registry.register(
        ServerCollector(board, totals, "proxy", proxy=lambda: proxy, process_info=lambda pid: (1.0, 1.0))
    )
    text = generate_latest(registry).decode()
    names = set()
    for fam in text_string_to_metric_families(text):  # a family with no sample yet counts too
        names.update(s.name for s in fam.samples)
        names.add(fam.name + "_total" if fam.type == "counter" else fam.name)
        if fam.type == "histogram":
            names.update(fam.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_every_query_names_a_metric_that_exists() -> None:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    names = {n for e in exprs for n in re.findall(r"\bprefork_lb_[a-z_]+", e)}
    exposed = exposed_sample_names()
    for name in sorted(names):
        assert name in exposed, f"{name} is not in /metrics: {sorted(exposed)}"
    panel_ids = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in doc["panels"]]
    assert len(set(panel_ids)) == len(panel_ids), "two panels in one place"
