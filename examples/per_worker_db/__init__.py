"""A connection pool opened in each worker after fork: see docs/gunicorn.md (per-worker resources)."""
