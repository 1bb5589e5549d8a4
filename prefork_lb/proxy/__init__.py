"""The L7 proxy: ``--dispatch proxy`` (in front of the local workers) and the standalone
``python -m prefork_lb proxy --backends ...``.

Modules, each importing only those after it (no cycles; see tools/check_imports.py):
``process`` (the supervised process: backends, health checks, admin endpoints, stopping),
``server`` (the client side, admission, the deadline sweep), ``exchange`` (one request's way
through: routing, retries, relaying), ``client_side`` (what an exchange needs of its client),
``state`` (what exchanges share: backends, strategy, settings, counters), ``backend`` (an
address with its pool, health and stats), ``upstream`` (the connection to a backend), ``memo``
(the response memo), ``headers`` and ``peers`` (request and response rewriting, trusted
peers), ``health`` (health and ejection state machines, retry budget), ``stats`` (counters
and latency histograms). Only ``process`` does I/O set-up; ``headers``, ``peers``, ``health``
and ``stats`` are pure.
"""
