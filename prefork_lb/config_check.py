"""The checks of a resolved config that no single setting's converter can make: settings that
are only wrong together, that name files, or that need privileges. Used by the command line
(``cli.py``) and ``prefork_lb.run()`` alike; a failure is one :class:`ConfigError` line (exit
code 2 on the command line).
"""

from __future__ import annotations

from prefork_lb.config import Config, ConfigError

__all__ = ["check", "log_warnings"]


def check(cfg: Config) -> None:
    """Settings that are only wrong together, or that name files: one line, exit code 2."""
    from prefork_lb.privileges import check_can_switch, identity
    from prefork_lb.proxy.peers import TrustedPeers

    why = check_can_switch(identity(cfg.user, cfg.group))
    if why is not None:
        raise ConfigError(why)
    try:  # read by the proxy and by the workers (wsgi.url_scheme) alike
        TrustedPeers(cfg.forwarded_allow_ips)
    except ValueError as exc:
        raise ConfigError(f"--forwarded-allow-ips: {exc}") from None
    if isinstance(cfg.max_rss, str):  # N% needs a cgroup memory limit: refused now, not per worker
        from prefork_lb.resources import resolve_max_rss

        try:
            resolve_max_rss(cfg.max_rss, max(cfg.workers, cfg.max_workers))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.mount:
        check_mounts(cfg)
    if cfg.dispatch != "proxy":
        if cfg.strategy == "sticky":
            raise ConfigError("--strategy sticky needs --dispatch proxy (handoff sees no cookies)")
        return
    if cfg.backends:
        from prefork_lb.proxy.health import parse_backends

        try:
            parse_backends(cfg.backends)
        except ValueError as exc:
            raise ConfigError(f"--backends: {exc}") from None
    if cfg.keyfile and not cfg.certfile:
        raise ConfigError("--keyfile needs --certfile")
    if cfg.certfile:
        import ssl

        from prefork_lb.proxy.process import tls_context

        try:
            tls_context(cfg.certfile, cfg.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use --certfile {cfg.certfile!r}: {exc}") from None


def check_mounts(cfg: Config) -> None:
    """--mount: the pools' table (cfg.mounts), and the settings it cannot go with. The server-wide
    --workers becomes the pools' total (each pool's default is the --workers given)."""
    from prefork_lb.mounts import MountError, parse_mounts
    from prefork_lb.settings.base import STRATEGIES

    if cfg.mounts is not None:
        return  # checked already (the table has set --workers to the pools' total)
    if cfg.dispatch != "proxy":
        if cfg.source_of("dispatch") != "default":
            raise ConfigError(f"--mount needs --dispatch proxy (this is --dispatch {cfg.dispatch})")
        cfg.set("dispatch", "proxy", "--mount")
    if cfg.app_uri:
        raise ConfigError(f"with --mount the apps are in the mounts: drop {cfg.app_uri!r}")
    if cfg.backends:
        raise ConfigError("--mount and --backends do not go together (a remote backend is in no pool)")
    if cfg.max_workers:
        raise ConfigError("--max-workers (autoscaling) does not go with --mount: give each pool its workers")
    defaults = {name: getattr(cfg, name) for name in ("workers", "interface", "strategy")}
    defaults.update(max_concurrency=cfg.max_concurrency, queue_size=cfg.queue_size)
    try:
        table = parse_mounts(cfg.mount, defaults, STRATEGIES)
    except MountError as exc:
        raise ConfigError(f"--mount: {exc}") from None
    cfg.set("workers", table.total_workers, "--mount (the pools' total)")
    cfg.mounts = table


def log_warnings(cfg: Config) -> None:
    """The settings a config file or the environment gave that this command ignores."""
    import logging

    for line in cfg.warnings:
        logging.getLogger("prefork_lb.error").warning(line)
