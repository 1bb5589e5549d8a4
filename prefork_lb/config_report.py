"""``--print-config`` and ``--check-config``: what a resolved config says, and whether it starts.

``--print-config`` prints every setting, one line each, ``name = value  (source)``, the value
as a Python literal (so the lines read like a config file) and the source where it came from:
``default``, ``config file '...'``, ``environment variable PREFORK_LB_...``, ``GUNICORN_CMD_ARGS``,
``PREFORK_LB_CMD_ARGS`` or ``command line``; then the app, the hooks and the warnings.
``--print-config --json`` prints the same as one JSON object.

``--check-config`` loads the config (done by then) and imports the app in the command-line
process, as a worker would (gevent's monkey-patching first); the master itself never imports the
app, so this is the only place it is tried before workers start. The process then exits: 0, or
one line and exit code 2.

Pure functions of a :class:`~prefork_lb.config.Config`, except :func:`check_app`, which imports.
"""

from __future__ import annotations

import json
from typing import Any

from prefork_lb.config import SETTINGS, Config

__all__ = ["check_app", "render_json", "render_text"]


def render_text(cfg: Config) -> str:
    width = max(len(s.name) for s in SETTINGS)
    lines = []
    for s in SETTINGS:
        value = cfg.__dict__[s.name]
        lines.append(f"{s.name.ljust(width)} = {value!r}  ({cfg.source_of(s.name)})")
    if cfg.app_uri is not None or cfg.local_workers:
        lines.append(f"{'wsgi_app'.ljust(width)} = {cfg.app_uri!r}  ({cfg.source_of('wsgi_app')})")
    for name in sorted(cfg.hooks):
        lines.append(f"{name.ljust(width)} = <hook>  ({cfg.source_of(name)})")
    lines += [f"# warning: {w}" for w in cfg.warnings]
    return "\n".join(lines) + "\n"


def render_json(cfg: Config) -> str:
    doc: dict[str, Any] = {
        "settings": {
            s.name: {"value": cfg.__dict__[s.name], "source": cfg.source_of(s.name)} for s in SETTINGS
        },
        "wsgi_app": {"value": cfg.app_uri, "source": cfg.source_of("wsgi_app")},
        "hooks": {name: cfg.source_of(name) for name in sorted(cfg.hooks)},
        "warnings": list(cfg.warnings),
    }
    return json.dumps(doc, indent=2, default=str) + "\n"


def check_app(cfg: Config, found: dict[str, str] | None = None) -> str | None:
    """Import the app as a worker would: None when it loads and is an app of --interface,
    else the one line that says why not. ``found`` gets the interface each app is served as,
    by its mount's route ("" without --mount)."""
    if cfg.mounts is not None:  # --mount: each pool's app, as its workers import it
        from prefork_lb.mounts import boot_line
        from prefork_lb.pools import pool_config

        for m in cfg.mounts.mounts:
            why = check_app(pool_config(cfg, m), found)
            if why is not None:
                return boot_line(m.route, why)
        return None
    if not cfg.local_workers or cfg.app_uri is None:
        return None  # the standalone proxy has no app
    from prefork_lb.app import AppLoadError, load_object
    from prefork_lb.asgi.detect import resolve
    from prefork_lb.worker.child import patch

    if cfg.interface != "asgi":
        patch()
    try:
        detected = resolve(load_object(cfg.app_uri, cfg.chdir), cfg.app_uri, cfg.interface)
    except AppLoadError as exc:
        return str(exc)
    except BaseException as exc:  # the app raised on import: its one line, no traceback
        return f"the app failed to import: {type(exc).__name__}: {exc}"
    if found is not None:
        found[cfg.mount_route or ""] = detected.interface
    return None


def ok_line(cfg: Config, found: dict[str, str]) -> str:
    """--check-config's line when all is well: what would be served, by how many workers, where."""
    where = f"{cfg.dispatch} on {', '.join(cfg.bind)}"
    if not cfg.local_workers:
        return f"config OK: proxy to {', '.join(cfg.backends or [])} on {', '.join(cfg.bind)}"
    if cfg.mounts is not None:
        pools = (f"{m.route} -> {m.app} ({found.get(m.route, m.interface)})" for m in cfg.mounts.mounts)
        what = "pools " + ", ".join(pools)
    else:
        what = f"{cfg.app_uri} ({found.get('', cfg.interface)})"
    n = cfg.workers
    return f"config OK: {what}, {n} worker{'' if n == 1 else 's'}, {where}"
