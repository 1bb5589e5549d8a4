"""prefork_lb: a prefork WSGI server and load balancer."""

from __future__ import annotations

from typing import Any

from prefork_lb import compiled as _compiled

_compiled.apply_environment()  # PREFORK_LB_PURE_PYTHON=1: the compiled modules from their source

__version__ = "0.1.0"
__all__ = ["OffloadPool", "__version__", "offload", "offload_async", "run"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the offload module is not needed by a master or a proxy.
    # ``prefork_lb.offload`` is a module that can be called like the function it exports.
    if name in ("offload", "OffloadPool", "offload_async"):
        import importlib

        module = importlib.import_module("prefork_lb.offload")
        return module if name == "offload" else getattr(module, name)
    raise AttributeError(name)


def run(app: Any, **settings: Any) -> int:
    """Serve a WSGI app object with a master and forked workers; returns the exit code.

    Settings are the names in docs/reference/settings.md: ``run(app, bind=["127.0.0.1:8000"],
    workers=4)``; the hooks of a config file (``post_fork``, ``when_ready``, ...) are given the
    same way: ``run(app, post_fork=f)``; gunicorn's names work too (``accesslog="-"``), and
    the gunicorn settings without an equivalent are named in one warning line. The app is
    imported once here and inherited by every worker.
    """
    from prefork_lb.arbiter import Arbiter
    from prefork_lb.config import build, gunicorn_keywords, split_hooks
    from prefork_lb.config_check import check, log_warnings
    from prefork_lb.logs import setup_error_log
    from prefork_lb.privileges import prepare_master
    from prefork_lb.settings.gunicorn_names import unsupported_warning

    settings, unsupported = gunicorn_keywords(settings)
    hooks, settings = split_hooks(settings, "run()")
    cfg = build(settings, environ={}, source="run()")
    cfg.hooks.update(hooks)
    cfg.sources.update(dict.fromkeys(hooks, "run()"))
    if unsupported:
        cfg.warnings.append(unsupported_warning(unsupported, "run()"))
    cfg.app_uri = getattr(app, "__name__", "app")
    cfg.app_object = app
    cfg.sources["wsgi_app"] = "run()"
    check(cfg)
    prepare_master(cfg)
    setup_error_log(cfg.log_level, cfg.error_logfile)
    log_warnings(cfg)
    arbiter = Arbiter(cfg)
    arbiter.bind()
    return arbiter.run()
