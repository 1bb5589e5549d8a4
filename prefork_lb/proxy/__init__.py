"""The L7 proxy: ``--dispatch proxy`` (in front of the local workers) and the standalone
``python -m prefork_lb proxy --backends ...``.

Modules: ``server`` (the client side and the shared state), ``exchange`` (one request's way
through: routing, retries, relaying), ``upstream`` (backends, pools, the upstream protocol),
``process`` (the supervised process: backends, health checks, admin endpoints, stopping),
``headers`` (request and response rewriting), ``health`` (health and ejection state machines,
retry budget), ``stats`` (counters and latency histograms). Only ``process`` does I/O set-up;
``headers``, ``health`` and ``stats`` are pure.
"""
