"""--mount: parsing, the table's slots and the routing rule (prefork_lb.mounts); the per-pool
config and interface choice in the master (prefork_lb.pools); the config checks."""

from __future__ import annotations

import logging

import pytest

from prefork_lb.cli import parse
from prefork_lb.config import ConfigError
from prefork_lb.mounts import (
    MountError,
    MountTable,
    boot_line,
    parse_mount,
    parse_mounts,
    parse_route,
    request_host,
)
from prefork_lb.pools import MountedInterfaces, interfaces_for, pool_config
from prefork_lb.settings.base import STRATEGIES

DEFAULTS = {
    "workers": 3,
    "interface": "auto",
    "strategy": "round_robin",
    "max_concurrency": 0,
    "queue_size": 100,
}


def mount(text: str):
    return parse_mount(text, DEFAULTS, STRATEGIES)


def table(*texts: str) -> MountTable:
    return parse_mounts(texts, DEFAULTS, STRATEGIES)


# -- parsing ------------------------------------------------------------------------------------


def test_defaults_come_from_the_server_wide_settings() -> None:
    m = mount("/api=svc.api:app")
    assert (m.route, m.host, m.prefix, m.app) == ("/api", None, "/api", "svc.api:app")
    assert (m.workers, m.interface, m.strategy, m.max_concurrency, m.queue_size) == (
        3,
        "auto",
        "round_robin",
        0,
        100,
    )


def test_every_key() -> None:
    m = mount(" /api/ = svc:app ; workers=2; interface=asgi;strategy=p2c; max-concurrency=8; queue_size=4 ;")
    assert (m.route, m.app, m.workers, m.interface, m.strategy) == ("/api", "svc:app", 2, "asgi", "p2c")
    assert (m.max_concurrency, m.queue_size) == (8, 4)


def test_app_with_an_equals_sign_in_a_factory_call() -> None:
    assert mount("/=mod:make(debug=1)").app == "mod:make(debug=1)"


@pytest.mark.parametrize(
    ("text", "host", "prefix"),
    [
        ("/", None, "/"),
        ("//", None, "/"),
        ("/api", None, "/api"),
        ("/api/v2/", None, "/api/v2"),
        ("API.Example.com/", "api.example.com", "/"),
        ("a-b.c/x", "a-b.c", "/x"),
    ],
)
def test_routes(text: str, host: str | None, prefix: str) -> None:
    assert parse_route(text) == (host, prefix)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("api", "must be \\[HOST\\]/PREFIX"),
        ("host:80/", "is not a host name"),
        ("*.example.com/", "is not a host name"),
        ("-x.com/", "is not a host name"),
        ("/a//b", "no empty segment"),
        ("/a?b", "no empty segment"),
        ("/a b", "no empty segment"),
    ],
)
def test_bad_routes(text: str, why: str) -> None:
    with pytest.raises(MountError, match=why):
        parse_route(text)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("/api", "must be ROUTE=MODULE:APP"),
        ("/api=", "no app after /api="),
        ("/api= ;workers=2", "no app"),
        ("/api=a:b;threads=2", "unknown key 'threads' \\(known: workers, interface"),
        ("/api=a:b;workers", "workers needs a value"),
        ("/api=a:b;workers=", "workers needs a value"),
        ("/api=a:b;workers=1;workers=2", "workers given twice"),
        ("/api=a:b;workers=0", "workers=0: must be at least 1"),
        ("/api=a:b;workers=two", "not a whole number"),
        ("/api=a:b;queue-size=-1", "queue-size=-1: must be at least 0"),
        ("/api=a:b;interface=rsgi", "interface='rsgi': must be one of auto, wsgi, asgi"),
        ("/api=a:b;strategy=fastest", "strategy='fastest': must be one of round_robin"),
    ],
)
def test_bad_mounts(text: str, why: str) -> None:
    with pytest.raises(MountError, match=why):
        mount(text)


def test_duplicate_routes_and_no_mount() -> None:
    with pytest.raises(MountError, match="route /api is mounted twice"):
        table("/api=a:b", "/api/=c:d")
    with pytest.raises(MountError, match="no mount given"):
        table()
    assert table("/api=a:b", "x.com/api=c:d").total_workers == 6  # another host: another route


# -- slots --------------------------------------------------------------------------------------


def test_pools_take_consecutive_slots_in_order() -> None:
    t = table("/api=a:b;workers=2", "/=c:d;workers=1", "/x=e:f;workers=3")
    assert len(t) == 3 and t.total_workers == 6
    assert [list(m.slots) for m in t.mounts] == [[0, 1], [2], [3, 4, 5]]
    owners = [t.for_slot(s) for s in range(-2, 7)]
    assert [None if m is None else m.route for m in owners] == [
        None,
        None,
        "/api",
        "/api",
        "/",
        "/x",
        "/x",
        "/x",
        None,
    ]
    assert t == table("/api=a:b;workers=2", "/=c:d;workers=1", "/x=e:f;workers=3")
    assert t != table("/api=a:b;workers=2") and t != "not a table"


# -- routing ------------------------------------------------------------------------------------


@pytest.fixture
def routes() -> MountTable:
    return table(
        "/=site:app",
        "/api=api:app",
        "/api/v2=v2:app",
        "api.example.com/=host:app",
        "api.example.com/admin=adm:app",
    )


@pytest.mark.parametrize(
    ("host", "path", "app"),
    [
        (None, "/", "site:app"),
        (None, "/index.html", "site:app"),
        (None, "/api", "api:app"),
        (None, "/api/", "api:app"),
        (None, "/api/users", "api:app"),
        (None, "/apix", "site:app"),  # segment boundary
        (None, "/api/v2", "v2:app"),  # longest prefix
        (None, "/api/v2/x", "v2:app"),
        (None, "/api/v20", "api:app"),
        ("other.com", "/api", "api:app"),
        ("api.example.com", "/api", "host:app"),  # the Host's mounts first, even with a shorter prefix
        ("api.example.com", "/admin/x", "adm:app"),
        ("api.example.com", "/", "host:app"),
    ],
)
def test_routing(routes: MountTable, host: str | None, path: str, app: str) -> None:
    m = routes.route(host, path)
    assert m is not None and m.app == app


def test_no_match_is_none() -> None:
    t = table("/api=a:b", "x.com/=c:d")
    assert t.route(None, "/") is None
    assert t.route("y.com", "/other") is None
    assert t.route("x.com", "/other").app == "c:d"


@pytest.mark.parametrize(
    ("value", "host"),
    [
        (None, None),
        (b"", None),
        (b"Example.COM", "example.com"),
        (b"example.com:8080", "example.com"),
        (b"[::1]:80", "[::1]"),
        (b"[::1", "[::1"),
        (b" x.org ", "x.org"),
    ],
)
def test_request_host(value: bytes | None, host: str | None) -> None:
    assert request_host(value) == host


# -- the config -----------------------------------------------------------------------------------

ARGS = [
    "--mount",
    "/api=tests.apps_asgi:echo;workers=2;interface=asgi;max-concurrency=4",
    "--mount",
    "/=tests.apps:echo",
]


def test_config_builds_the_table_and_the_total() -> None:
    cfg = parse([*ARGS, "--workers", "3", "--strategy", "p2c"])
    assert cfg.dispatch == "proxy" and cfg.source_of("dispatch") == "--mount"
    assert cfg.workers == 5 and cfg.app_uri is None
    api, site = cfg.mounts.mounts
    assert (api.workers, api.interface, api.max_concurrency, site.workers, site.strategy) == (
        2,
        "asgi",
        4,
        3,
        "p2c",
    )


def test_config_file_list_and_environment(tmp_path) -> None:
    conf = tmp_path / "c.py"
    conf.write_text('mount = ["/a=x:y", "/=z:w;workers=1"]\nworkers = 2\n')
    cfg = parse(["-c", str(conf)])
    assert [m.route for m in cfg.mounts.mounts] == ["/a", "/"] and cfg.workers == 3
    cfg = parse([], environ={"PREFORK_LB_MOUNT": "/a=x:y|/=z:w", "PREFORK_LB_WORKERS": "1"})
    assert cfg.workers == 2


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--dispatch", "handoff"], "--mount needs --dispatch proxy \\(this is --dispatch handoff\\)"),
        (["tests.apps:echo"], "with --mount the apps are in the mounts: drop 'tests.apps:echo'"),
        (["--backends", "127.0.0.1:9"], "--mount and --backends do not go together"),
        (["--max-workers", "9"], "--max-workers \\(autoscaling\\) does not go with --mount"),
        (["--mount", "/api=x:y"], "--mount: route /api is mounted twice"),
        (["--mount", "/x=y:z;port=1"], "unknown key 'port'"),
    ],
)
def test_config_refusals(args: list[str], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse([*ARGS, *args], environ={})


def test_a_bad_mount_is_quoted_as_the_user_wrote_it() -> None:
    with pytest.raises(ConfigError) as exc:
        parse(["--mount", "api=myapi:app"], environ={})
    assert str(exc.value).startswith("--mount api=myapi:app: route 'api': must be [HOST]/PREFIX")
    with pytest.raises(ConfigError, match=r"^--mount /=x:y;port=1: unknown key 'port'"):
        parse([], environ={"PREFORK_LB_MOUNT": "/a=x:y|/=x:y;port=1"})


def test_check_twice_keeps_the_table() -> None:
    from prefork_lb.config_check import check

    cfg = parse(ARGS, environ={})
    before = cfg.mounts
    check(cfg)
    assert cfg.mounts is before and cfg.workers == before.total_workers


# -- the master's side ----------------------------------------------------------------------------


def test_pool_config_is_a_copy_with_the_pools_settings() -> None:
    cfg = parse(ARGS, environ={})
    api = pool_config(cfg, cfg.mounts.mounts[0])
    assert (api.app_uri, api.interface, api.max_concurrency, api.workers) == (
        "tests.apps_asgi:echo",
        "asgi",
        4,
        2,
    )
    assert api.source_of("interface") == "--mount /api"
    assert (cfg.app_uri, cfg.interface, cfg.source_of("interface")) == (None, "auto", "default")


def test_interfaces_per_pool(caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse(ARGS, environ={})
    choice = interfaces_for(cfg)
    assert choice.learned() == {"/api": "asgi", "/": "wsgi"}
    assert isinstance(choice, MountedInterfaces)
    assert [choice.for_slot(s).current for s in range(4)] == ["asgi", "asgi", "wsgi", "wsgi"]
    assert choice.for_slot(-1) is choice and choice.cfg_for(-1, cfg) is cfg
    assert choice.cfg_for(2, cfg).app_uri == "tests.apps:echo"
    # auto is learned per pool: the / pool's worker found an ASGI app
    with caplog.at_level(logging.INFO, "prefork_lb.error"):
        assert choice.wrong_in(2, "wsgi") is True
    assert "The app of --mount / is an ASGI application: starting ASGI workers" in caplog.text
    assert choice.learned() == {"/api": "asgi", "/": "asgi"}
    assert [choice.for_slot(s).current for s in range(4)] == ["asgi", "asgi", "asgi", "asgi"]
    site = choice.for_slot(2)
    choice.reconfigure(parse(ARGS, environ={}))  # a HUP keeps what the pool learned
    assert choice.for_slot(2) is site and site.current == "asgi"
    plain = interfaces_for(parse(["tests.apps:echo"], environ={}))
    assert not isinstance(plain, MountedInterfaces) and plain.for_slot(0) is plain
    assert plain.learned() == {}


# -- the master with pools: fake fork, real loopback listeners --------------------------------------

MASTER = [*ARGS, "--workers", "1", "-b", "127.0.0.1:0", "--stats-bind", "off", "--control-socket", "off"]


@pytest.fixture
def master():
    from prefork_lb.arbiter import Arbiter
    from tests.unit.test_arbiter import FakeOS

    fake = FakeOS()
    later: list[list[str]] = []
    arb = Arbiter(
        parse(MASTER, environ={}),
        reload_config=lambda: parse([*MASTER, *later[-1]] if later else MASTER, environ={}),
        clock=fake.clock,
        fork=fake.fork,
        kill=fake.kill,
        waitpid=fake.waitpid,
    )
    arb.bind()
    arb.later = later  # type: ignore[attr-defined]
    yield arb
    for s in arb.all_sockets():
        s.close()


def test_the_master_starts_each_pools_workers_with_its_interface(master) -> None:
    master.manage()
    workers = sorted((w.slot, w.interface) for w in master.workers.values() if w.slot >= 0)
    assert workers == [(0, "asgi"), (1, "asgi"), (2, "wsgi")]  # /api: 2 asgi; /: --workers (1) auto
    assert master.num_workers == 3 and master.mode.ready_message(3, master.interface.learned()) == (
        "Ready: pools /api -> tests.apps_asgi:echo (2 asgi), / -> tests.apps:echo (1 wsgi)"
    )
    assert master.mode.slot_port(2) > 0


def test_ttin_ttou_and_scale_leave_the_pools_as_they_are(master, caplog) -> None:
    master.manage()
    master.handle_ttin()
    master.handle_ttou()
    master.totals.request_scale(5)  # `prefork_lb ctl scale 5`
    master.handle_ttin()
    assert master.num_workers == 3
    assert caplog.text.count("ignored: with --mount each pool has its workers=") == 3
    assert "Control socket: scale ignored" in caplog.text


def test_a_reload_replaces_every_pool_but_keeps_the_layout(master, caplog) -> None:
    master.manage()
    before = master.cfg.mounts
    master.later.append(["--mount", "/new=x:y"])
    master.handle_hup()
    assert "a change of the --mount routes or their workers needs a restart or USR2" in caplog.text
    assert master.cfg.mounts is before and master.num_workers == 3 and master.cfg.mount == ARGS[1::2]
    assert master.generation == 1
    caplog.clear()
    changed = [ARGS[0], ARGS[1].replace("max-concurrency=4", "max-concurrency=9;strategy=p2c"), *ARGS[2:]]
    master.later.append(["--workers", "1"])  # same mounts: a reload like any other
    master.handle_hup()
    assert master.cfg.mounts == before and master.generation == 2
    # the same routes and workers with other keys: taken, for the new workers and proxy
    master.later.clear()
    master.reload_config = lambda: parse([*changed, *MASTER[len(ARGS) :]], environ={})
    master.handle_hup()
    api = master.cfg.mounts.mounts[0]
    assert (api.max_concurrency, api.strategy, master.num_workers) == (9, "p2c", 3)
    assert master.interface.cfg_for(0, master.cfg).max_concurrency == 9
    assert "restart or USR2" not in caplog.text


def test_process_titles_name_the_app_or_the_routes() -> None:
    from prefork_lb.child import title_label

    cfg = parse(ARGS, environ={})
    assert title_label(cfg, "proxy") == "mount /api /"
    assert title_label(pool_config(cfg, cfg.mounts.mounts[1]), "x") == "tests.apps:echo"
    assert title_label(parse(["tests.apps:echo"], environ={}), "x") == "tests.apps:echo"
    assert (
        title_label(parse(["proxy", "--backends", "127.0.0.1:9"], environ={}), "standalone") == "standalone"
    )
    assert title_label(parse([*ARGS, "--name", "shop"], environ={}), "x") == "shop"


# -- a pool's boot error names its mount -----------------------------------------------------------


def test_boot_line_names_the_mount_and_the_fix_in_it() -> None:
    wrong = "app 'mysite:wsgi_app' is a WSGI application (x), not an ASGI one: start it with --interface wsgi (or auto)"
    assert boot_line("/", wrong) == (
        "--mount /: app 'mysite:wsgi_app' is a WSGI application (x), not an ASGI one: "
        "use interface=wsgi (or auto) in its --mount"
    )
    assert (
        boot_line("/api", "module 'myapi' has no attribute 'x'")
        == "--mount /api: module 'myapi' has no attribute 'x'"
    )
    assert boot_line(None, wrong) == wrong


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("/=tests.apps:echo;interface=asgi", "use interface=wsgi (or auto) in its --mount"),
        ("/=tests.apps:nosuchattr", "has no attribute 'nosuchattr'"),
    ],
)
def test_a_pools_worker_says_its_mount_on_the_boot_pipe(spec: str, want: str) -> None:
    import os
    from types import SimpleNamespace

    from prefork_lb.child import EXIT_APP_LOAD
    from prefork_lb.worker.child import WorkerChild

    cfg = parse(["--mount", spec], environ={})
    mine = pool_config(cfg, cfg.mounts.mounts[0])
    r, w = os.pipe()
    try:
        me = SimpleNamespace(cfg=mine, ctx=SimpleNamespace(boot_fd=w), interface="wsgi")
        assert WorkerChild.load_app(me) == (None, EXIT_APP_LOAD)  # type: ignore[arg-type]
        line = os.read(r, 65536).decode().strip()
    finally:
        os.close(r)
        os.close(w)
    assert line.startswith("--mount /: app 'tests.apps:") or line.startswith("--mount /: module"), line
    assert want in line and "--interface" not in line


def test_the_admin_process_knows_each_slots_pool() -> None:
    from prefork_lb.admin.child import pools_by_slot

    assert pools_by_slot(parse([*ARGS, "--workers", "1"], environ={})) == {0: "/api", 1: "/api", 2: "/"}
    assert pools_by_slot(parse(["tests.apps:echo"], environ={})) is None


def test_a_pools_workers_divide_memory_and_cpus_by_the_whole_servers_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--max-rss N% and the offload pools' size share out what every worker shares: with pools
    of 1 and 7 workers under an 8 GiB limit, 80% is 6553 MiB in all, not 6553 for the one and
    936 for each of the seven (13 GiB: the container would be OOM-killed first)."""
    from prefork_lb import resources
    from prefork_lb.offload.lifecycle import WorkerOffload
    from prefork_lb.worker.child import max_rss

    monkeypatch.setattr(resources, "memory_limit", lambda root="/": 8 << 30)
    monkeypatch.setattr(resources, "cpu_count", lambda: 16)
    monkeypatch.setenv("PREFORK_LB_OFFLOAD_PROCESSES", "")  # from_config exports the size: undone
    args = ["--mount", "/a=tests.apps:echo;workers=1", "--mount", "/=tests.apps:echo;workers=7"]
    cfg = parse([*args, "--max-rss", "80%"], environ={})
    one, seven = (pool_config(cfg, m) for m in cfg.mounts.mounts)
    assert (one.workers, seven.workers, resources.server_workers(one)) == (1, 7, 8)
    assert max_rss(one) == max_rss(seven) == (8 << 30) * 80 // 100 // 8 >> 20
    assert WorkerOffload.from_config(one).processes == WorkerOffload.from_config(seven).processes == 2
