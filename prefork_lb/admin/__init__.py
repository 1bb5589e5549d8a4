"""The admin listener (--stats-bind) and what it serves, in every dispatch mode.

``child`` is the supervised admin process; ``server`` its HTTP side (routes, token);
``documents`` the /lb-health and /lb-stats JSON read from shared memory; ``metrics`` the
Prometheus collector; ``totals`` the master's shared counters (what exited processes counted);
``link`` the private channel to the proxy in --dispatch proxy. This package imports nothing at
import time: the master uses ``totals`` alone (no prometheus_client there).
"""
