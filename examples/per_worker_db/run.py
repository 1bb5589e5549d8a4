"""The same recipe from Python: ``python -m examples.per_worker_db.run`` (prefork_lb.run)."""

from __future__ import annotations

import os
import sys

import prefork_lb
from examples.per_worker_db import db
from examples.per_worker_db.app import app

DATABASE = os.environ.get("EXAMPLE_DATABASE", "/tmp/prefork_lb-example.sqlite3")


def post_worker_init(worker: object) -> None:
    db.open_pool(DATABASE, size=4)


def worker_exit(server: object, worker: object) -> None:
    db.close_pool()


if __name__ == "__main__":
    sys.exit(
        prefork_lb.run(
            app,
            bind=[os.environ.get("EXAMPLE_BIND", "127.0.0.1:8000")],
            workers=int(os.environ.get("EXAMPLE_WORKERS", "2")),
            post_worker_init=post_worker_init,
            worker_exit=worker_exit,
        )
    )
