"""The Server and Overload settings: listeners, worker processes, recycling, autoscaling, load shedding.

Declared once here; :class:`prefork_lb.config.Config` inherits them, and the registry, the CLI,
the environment variables and the docs follow their order in this class.
"""

from __future__ import annotations

from prefork_lb.settings.base import (
    SERVER,
    STRATEGIES,
    Setting,
    bind_list,
    boolean,
    cpu_count,
    group_name,
    non_negative_float,
    non_negative_int,
    offload_count,
    offload_executor,
    optional_str,
    positive_int,
    rss_limit,
    umask_value,
    user_name,
)


class ServerSettings:
    """Server and Overload sections (in the order the docs list them)."""

    # --- server
    bind = Setting(
        bind_list,
        lambda: ["127.0.0.1:8000"],
        "Address to listen on: HOST:PORT, [IPV6]:PORT, "
        "unix:PATH or fd://N. Repeat the flag to listen on several.",
        flags=("-b", "--bind"),
        append=True,
        metavar="ADDRESS",
        default_doc="127.0.0.1:8000",
        common=True,
    )

    # 0 is no user's value; Config.drop_local_workers sets it for the standalone proxy.
    workers = Setting(
        positive_int,
        cpu_count,
        "Number of worker processes. The default is the number of CPUs this process may use: "
        "the CPUs of its affinity mask (taskset, a cpuset), capped by its cgroup's CPU quota "
        "(cpu.max, cpu.cfs_quota_us) rounded up (a 1.5-CPU quota gives 2, below one CPU 1), "
        "not every CPU of the host.",
        flags=("-w", "--workers"),
        extra_env=("WEB_CONCURRENCY",),
        metavar="N",
        default_doc="the number of CPUs",
        commands=(SERVER,),
        common=True,
    )

    dispatch = Setting(
        str,
        "reuseport",
        "How connections reach workers: reuseport (one SO_REUSEPORT listener per worker slot, "
        "held by the master), shared (one listener inherited by every worker) or handoff (a "
        "dispatcher process accepts and passes each connection to the worker --strategy picks) or "
        "proxy (workers listen on their own loopback ports and a proxy process routes each request "
        "to one; see the Proxy section).",
        flags=("--dispatch",),
        choices=("reuseport", "shared", "handoff", "proxy"),
        commands=(SERVER,),
        common=True,
        summary="How connections reach workers: reuseport, shared, handoff or proxy",
    )

    interface = Setting(
        str,
        "auto",
        "The app's interface: wsgi (app(environ, start_response), served by gevent workers), asgi "
        "(async def app(scope, receive, send), or an ASGI 2 class, served by asyncio workers) or "
        "auto (told from the app object's shape when a worker imports it; an object that is "
        "neither stops the server with one line). The master never imports the app: under auto "
        "it starts WSGI workers until one finds an ASGI app, then ASGI workers.",
        flags=("--interface",),
        choices=("auto", "wsgi", "asgi"),
        commands=(SERVER,),
        common=True,
        summary="The app's interface: auto, wsgi or asgi",
    )

    lifespan = Setting(
        str,
        "auto",
        "The ASGI lifespan protocol (ASGI workers only), as uvicorn's --lifespan: auto (run the "
        "app's startup before the worker is ready and its shutdown after the drain; an app that "
        "raises on the lifespan scope before sending anything does not support it: one info "
        "line, and the worker serves without), on (the app must support it: any failure of its "
        "startup is a boot failure, one line and exit 3, never a respawn loop) or off (the "
        "lifespan scope is never sent). A startup the app reports failed "
        "(lifespan.startup.failed) is a boot failure under auto too.",
        flags=("--lifespan",),
        choices=("auto", "on", "off"),
        commands=(SERVER,),
        common=True,
        summary="The ASGI lifespan protocol: auto, on or off",
    )

    strategy = Setting(
        str,
        "least_connections",
        "Balancing strategy of --dispatch handoff (which worker gets the next connection) and of "
        "the proxy (which backend gets the next request). hash keys on the client address; "
        "sticky (proxy only) pins a client to a backend with a cookie.",
        flags=("--strategy",),
        choices=STRATEGIES,
        common=True,
        summary="Which worker (handoff) or backend (proxy) gets the next connection or request",
    )

    max_requests = Setting(
        non_negative_int,
        0,
        "Recycle a worker after it served this many requests (0: never). Its replacement is "
        "started and ready before it stops, so no request is refused.",
        flags=("--max-requests",),
        metavar="N",
        commands=(SERVER,),
        common=True,
        summary="Recycle a worker after this many requests (0: never)",
    )

    max_requests_jitter = Setting(
        non_negative_int,
        0,
        "Add a random 0..N to max_requests per worker, so workers do not recycle together.",
        flags=("--max-requests-jitter",),
        metavar="N",
        commands=(SERVER,),
    )

    pidfile = Setting(
        optional_str,
        None,
        "Write the master's pid to this file.",
        flags=("-p", "--pid"),
        metavar="FILE",
        common=True,
    )

    proc_name = Setting(
        optional_str,
        None,
        "Name shown in process titles (default: the app path).",
        flags=("-n", "--name"),
        metavar="NAME",
    )

    offload_processes = Setting(
        offload_count,
        -1,
        "Processes in each worker's CPU offload pool (prefork_lb.offload, also "
        "environ['prefork_lb.offload']). auto: the usable CPUs (as for --workers: affinity and "
        "cgroup quota) divided among the workers, at least 1, so "
        "all pools together fill the machine without oversubscribing it; they start on first "
        "use. 0: no pool is offered in the environ.",
        flags=("--offload-processes",),
        metavar="N|auto",
        default_doc="auto",
        commands=(SERVER,),
    )

    offload_executor = Setting(
        offload_executor,
        None,
        "Where prefork_lb.offload(fn, *args) runs: local (each worker's own pool, "
        "--offload-processes), dask://HOST:PORT (a Dask distributed scheduler; needs "
        "prefork_lb[dask]) or MODULE:FACTORY (a function returning a concurrent.futures.Executor). "
        "Each worker makes its own executor after fork; waits never block the worker's loop, "
        "and the local pool's timeout and error rules hold (a lost scheduler: OffloadError).",
        flags=("--offload-executor",),
        metavar="local|dask://HOST:PORT|MODULE:FACTORY",
        default_doc="local",
        commands=(SERVER,),
    )

    max_workers = Setting(
        non_negative_int,
        0,
        "Autoscaling: up to this many workers (0: off). --workers is then the minimum: a worker "
        "is added while every worker has requests in flight for --autoscale-up-after seconds, "
        "and one removed once two workers have been idle for --autoscale-down-after seconds "
        "(with one fewer, one would still be idle), so a steady load keeps a steady count.",
        flags=("--max-workers",),
        section="Overload",
        metavar="N",
        commands=(SERVER,),
        common=True,
        summary="Autoscaling: up to this many workers, --workers the minimum (0: off)",
    )

    autoscale_up_after = Setting(
        non_negative_float,
        2.0,
        "Seconds every worker must stay busy before autoscaling adds one.",
        flags=("--autoscale-up-after",),
        section="Overload",
        metavar="SECONDS",
        commands=(SERVER,),
    )

    autoscale_down_after = Setting(
        non_negative_float,
        30.0,
        "Seconds the capacity autoscaling added must stay idle (two workers idle) before it "
        "removes a worker; a change restarts the count (never below --workers).",
        flags=("--autoscale-down-after",),
        section="Overload",
        metavar="SECONDS",
        commands=(SERVER,),
    )

    max_concurrency = Setting(
        non_negative_int,
        0,
        "Requests one worker processes at once (0: no limit). Past it requests wait in a queue "
        "of --queue-size; past both they get 503 with Retry-After at once.",
        flags=("--max-concurrency",),
        section="Overload",
        metavar="N",
        commands=(SERVER,),
        common=True,
        summary="Requests one worker processes at once; more queue, then get 503 (0: no limit)",
    )

    queue_size = Setting(
        non_negative_int,
        100,
        "Requests that may wait for a free place when --max-concurrency is reached.",
        flags=("--queue-size",),
        section="Overload",
        metavar="N",
        commands=(SERVER,),
    )

    request_timeout = Setting(
        non_negative_float,
        0.0,
        "Deadline of one request in seconds (0: none). A request past it gets 504 when nothing "
        "was sent yet, else its connection is closed, and its stack is logged. A view that "
        "blocks its worker's event loop (CPU, a C call holding the GIL) gets its worker aborted "
        "by the master 1 s past the deadline (its stack in the error log, SIGABRT then SIGKILL) "
        "and replaced at once; behind --dispatch proxy the client gets 504, elsewhere its "
        "connection closes.",
        flags=("--request-timeout",),
        section="Overload",
        metavar="SECONDS",
        commands=(SERVER,),
        common=True,
        summary="Deadline of one request in seconds: 504 (0: none)",
    )

    max_rss = Setting(
        rss_limit,
        0,
        "Recycle a worker whose resident memory passes this many MiB (0: never), after a random "
        "delay of up to --max-rss-jitter seconds; its replacement is ready before it drains. "
        "N% is a share of the cgroup memory limit (memory.max, memory.limit_in_bytes) that all "
        "workers together may use: each worker gets N% of the limit divided by the number of "
        "workers (--max-workers when autoscaling), so 80% in a 2 GiB container with 4 workers "
        "is 409 MiB per worker. Without a cgroup memory limit N% is an error at start.",
        flags=("--max-rss",),
        section="Overload",
        metavar="MIB|N%",
        commands=(SERVER,),
    )

    max_rss_jitter = Setting(
        non_negative_float,
        5.0,
        "Upper bound of the random delay before a worker over --max-rss asks to be replaced.",
        flags=("--max-rss-jitter",),
        section="Overload",
        metavar="SECONDS",
        commands=(SERVER,),
    )

    worker_connections = Setting(
        positive_int,
        1000,
        "Most connections one worker serves at once; further ones wait in the listen backlog.",
        flags=("--worker-connections",),
        metavar="N",
        commands=(SERVER,),
    )

    backlog = Setting(
        positive_int,
        2048,
        "Listen backlog of each listening socket.",
        flags=("--backlog",),
        metavar="N",
    )

    root_path = Setting(
        str,
        "",
        "SCRIPT_NAME given to the app, for apps mounted below a path prefix.",
        flags=("--root-path",),
        metavar="PATH",
        commands=(SERVER,),
    )

    chdir = Setting(
        optional_str,
        None,
        "Change to this directory before loading the app.",
        flags=("--chdir",),
        metavar="DIR",
        common=True,
    )

    user = Setting(
        user_name,
        None,
        "Run the workers as this user (a name or a uid): each switches to it right after fork, "
        "before it imports the app, as gunicorn's --user. The master stays as it was started "
        "(root is needed to switch); the log files are handed to the user so workers can reopen "
        "them.",
        flags=("-u", "--user"),
        metavar="USER",
        default_doc="unset (the user that started it)",
        commands=(SERVER,),
    )

    group = Setting(
        group_name,
        None,
        "Run the workers with this group (a name or a gid); default with --user: that user's "
        "primary group. Supplementary groups are the user's (initgroups).",
        flags=("-g", "--group"),
        metavar="GROUP",
        default_doc="unset (the user's group with --user)",
        commands=(SERVER,),
    )

    umask = Setting(
        umask_value,
        None,
        "The master's umask, set at start, so the files and unix sockets it and the workers make "
        "get it (022, 0o22 or 18 are the same). Unset: the umask it was started with.",
        flags=("-m", "--umask"),
        metavar="MASK",
        default_doc="unset (inherited)",
    )

    server_header = Setting(
        boolean,
        True,
        "Send a 'Server: prefork_lb' header.",
        flags=("--server-header",),
        metavar="BOOL",
        commands=(SERVER,),
    )
