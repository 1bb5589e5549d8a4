"""The ways a connection reaches a worker (--dispatch).

``reuseport`` and ``shared`` are kernel dispatch: the master only creates the listeners
(prefork_lb.arbiter, prefork_lb.sockets) and workers accept. ``handoff`` has a dispatcher
process accept and pass each connection to the worker a balancing strategy picks.
"""

DISPATCH_MODES = ("reuseport", "shared", "handoff", "proxy")
