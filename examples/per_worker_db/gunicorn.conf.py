# A gunicorn config file that opens a connection pool in each worker (prefork_lb reads it as is):
#
#   cd examples/per_worker_db && PYTHONPATH=../.. python -m prefork_lb   # found in the working directory
#   python -m prefork_lb -c examples/per_worker_db/gunicorn.conf.py      # from the repository root
#
# The hooks import the pool's module by the same name as the app does, so both reach one module.
import os

from examples.per_worker_db import db

wsgi_app = "examples.per_worker_db.app:app"
bind = os.environ.get("EXAMPLE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("EXAMPLE_WORKERS", "2"))
DATABASE = os.environ.get("EXAMPLE_DATABASE", "/tmp/prefork_lb-example.sqlite3")


def post_worker_init(worker):  # in each worker, after fork, once the app is imported
    db.open_pool(DATABASE, size=4)


def worker_exit(server, worker):  # in each worker, as it exits
    db.close_pool()
