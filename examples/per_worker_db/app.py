"""A WSGI app that answers with its worker's pid and a query on that worker's own connection."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from examples.per_worker_db import db


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    with db.pool().connection() as conn:
        conn.execute("INSERT INTO hits (pid) VALUES (?)", (os.getpid(),))
        conn.commit()
        (mine,) = conn.execute("SELECT COUNT(*) FROM hits WHERE pid = ?", (os.getpid(),)).fetchone()
        (version,) = conn.execute("SELECT sqlite_version()").fetchone()
    body = json.dumps(
        {"pid": os.getpid(), "pool_pid": db.pool().pid, "hits_by_this_worker": mine, "sqlite": version}
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
