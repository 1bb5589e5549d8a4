"""The resolved configuration: :class:`Config`, the settings registry, and where values come from.

Every setting is declared once, as a :class:`~prefork_lb.settings.base.Setting` class attribute
in ``prefork_lb/settings/`` (and ``config`` here). :class:`Config` inherits those declarations,
so ``cfg.workers`` is an ``int`` to mypy and a plain attribute read at run time. The registry
(:data:`SETTINGS`, in declaration order) drives the argparse CLI (``cli.py``), the
``PREFORK_LB_*`` environment variables, the Python config file (``-c``) and the generated
``docs/reference/settings.md`` (``python -m prefork_lb.config``).

Precedence, lowest first: defaults < config file < environment (``PREFORK_LB_*``) <
``GUNICORN_CMD_ARGS`` < ``PREFORK_LB_CMD_ARGS`` < command line. The config file is the one
``-c`` names (on the command line, in one of the ``*_CMD_ARGS``, or ``PREFORK_LB_CONFIG``), else
``./prefork_lb.conf.py`` or ``./gunicorn.conf.py`` when the command line asks to look
(:data:`DISCOVERED`). A config file may use gunicorn's names (``accesslog``, ``loglevel``): the
table in ``settings/gunicorn_names.py`` says what each is here, and one warning line names the
gunicorn settings it gave that have no equivalent. ``cfg.sources`` says where each value came
from (``--print-config``).

Invariants:

- Every value a config holds went through its setting's converter: the layers above, and code
  that overrides a value later (the arbiter, the proxy subcommand), all write through
  :meth:`Config.set`, which converts and validates like user input and names the source in its
  one-line :class:`ConfigError`. Assigning ``cfg.workers = ...`` raises.
- The one value no converter accepts is ``workers = 0``, "no local workers": only
  :meth:`Config.drop_local_workers` (the standalone proxy) sets it, together with
  ``dispatch = "proxy"`` and ``max_workers = 0``.
"""

from __future__ import annotations

import os
import runpy
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from prefork_lb.settings import gunicorn_names as gn
from prefork_lb.settings.admin import AdminSettings
from prefork_lb.settings.base import (
    COMMAND_LINES,
    COMMANDS,
    ENV_PREFIX,
    SERVER,
    ConfigError,
    Setting,
    optional_str,
)
from prefork_lb.settings.http import HttpSettings
from prefork_lb.settings.logs import LogSettings
from prefork_lb.settings.proxy import ProxySettings
from prefork_lb.settings.server import ServerSettings

__all__ = [
    "BY_NAME",
    "DISCOVERED",
    "ENV_PREFIX",
    "HOOK_NAMES",
    "SETTINGS",
    "Config",
    "ConfigError",
    "Setting",
    "build",
    "defaults",
    "reference_markdown",
    "split_hooks",
]


class Config(ServerSettings, ProxySettings, AdminSettings, HttpSettings, LogSettings):
    """Resolved settings plus the app. Typed attribute access: ``cfg.workers``.

    A new config holds every default; :func:`build` layers the sources over them.
    """

    # --- config itself
    config = Setting(
        optional_str,
        None,
        "Python config file; its module-level names set settings.",
        flags=("-c", "--config"),
        section="Config",
        metavar="FILE",
        cli=True,
        common=True,
    )

    app_uri: str | None
    hooks: dict[str, Callable[..., Any]]
    app_object: Any  # prefork_lb.run(app): an app given as an object, not a path
    mounts: Any  # --mount: the prefork_lb.mounts.MountTable the config checks build, else None
    mount_route: str | None  # a pool's copy (prefork_lb.pools.pool_config): its mount's route
    # A pool's copy: the whole server's worker count (its ``workers`` is the pool's). What
    # shares the memory limit and the CPUs is every worker: see server_workers().
    server_workers: int | None
    local_workers: bool  # False only for the standalone proxy (see drop_local_workers)
    warnings: list[str]  # settings a config file or the environment gave that the command ignores
    sources: dict[str, str]  # setting -> where its value came from ("default" when not given)

    def __init__(
        self,
        app_uri: str | None = None,
        hooks: dict[str, Callable[..., Any]] | None = None,
        app_object: Any = None,
    ) -> None:
        d = self.__dict__  # settings live here, under their names (see settings.base)
        for s in SETTINGS:
            d[s.name] = s.resolve_default()
        d["app_uri"] = app_uri
        d["hooks"] = {} if hooks is None else hooks
        d["app_object"] = app_object
        d["local_workers"] = True
        d["mounts"] = None
        d["mount_route"] = None
        d["server_workers"] = None
        d["warnings"] = []
        d["sources"] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        if name in BY_NAME:  # a bare assignment would skip conversion and validation
            raise AttributeError(f"{name} is a setting: use cfg.set({name!r}, value, source)")
        object.__setattr__(self, name, value)

    def set(self, name: str, value: Any, source: str) -> None:
        """Convert and validate ``value`` as the setting ``name`` wants; ``source`` says where it
        came from (``"command line"``, ``"environment variable X"``, or why code overrides it),
        and starts the one-line :class:`ConfigError` of a bad value."""
        setting = BY_NAME.get(name)
        if setting is None:
            raise ConfigError(f"{source}: unknown setting {name!r}")
        if value == 0 and name == "workers" and not self.local_workers:
            # The standalone proxy keeps "no local workers" across a SIGHUP reload (it sets
            # the count it runs, 0, on the new config): see drop_local_workers.
            self.__dict__[name] = 0
            return
        self.__dict__[name] = setting.convert(value, source)
        self.sources[name] = source

    def source_of(self, name: str) -> str:
        """Where the value of setting ``name`` came from: ``"default"`` when nothing set it."""
        return self.sources.get(name, "default")

    def drop_local_workers(self, source: str) -> None:
        """The standalone proxy (``python -m prefork_lb proxy``): dispatch proxy, no WSGI workers.

        ``workers = 0`` is how the master knows it runs no local workers; no user may give it
        (the converter wants at least 1), so it is set here, together with ``dispatch = "proxy"``
        and ``max_workers = 0`` (no autoscaling of workers that do not exist). From then on
        :meth:`set` also accepts ``workers = 0`` on this config, and only on it.
        """
        self.set("dispatch", "proxy", source)
        self.set("max_workers", 0, source)
        self.__dict__["local_workers"] = False
        self.__dict__["workers"] = 0

    @property
    def values(self) -> MutableMapping[str, Any]:
        """The settings as a mapping (name -> value), live. Writes go through :meth:`set`."""
        return _Values(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        # the same settings from other sources are the same config
        mine = {k: v for k, v in self.__dict__.items() if k != "sources"}
        return mine == {k: v for k, v in other.__dict__.items() if k != "sources"}

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value (as the dataclass was)

    def __repr__(self) -> str:
        items = ", ".join(f"{name}={value!r}" for name, value in self.values.items())
        return f"Config(app_uri={self.app_uri!r}, {items})"


class _Values(MutableMapping[str, Any]):
    """``cfg.values``: a view of a config's settings. Setting an item is ``cfg.set(name, value,
    "override")``, so the mapping is no way around conversion; new code calls ``cfg.set`` with a
    source that says why it overrides."""

    __slots__ = ("_cfg",)

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg

    def __getitem__(self, name: str) -> Any:
        if name not in BY_NAME:
            raise KeyError(name)
        return self._cfg.__dict__[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._cfg.set(name, value, "override")

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"setting {name!r} cannot be removed, only set")

    def __iter__(self) -> Iterator[str]:
        return iter(BY_NAME)

    def __len__(self) -> int:
        return len(BY_NAME)


def _declared(*owners: type) -> list[Setting[Any]]:
    """The settings of each class in turn, each class's in declaration order."""
    return [v for cls in owners for v in vars(cls).values() if isinstance(v, Setting)]


# The section classes in the order Config lists them, then Config's own: the docs' order.
SETTINGS: list[Setting[Any]] = _declared(*Config.__bases__, Config)

BY_NAME: dict[str, Setting[Any]] = {s.name: s for s in SETTINGS}


def defaults() -> Config:
    return Config()


HOOK_NAMES = (
    "on_starting",
    "when_ready",
    "pre_fork",
    "post_fork",
    "post_worker_init",
    "worker_exit",
    "child_exit",
    "on_exit",
    "pre_request",
    "post_request",
)


def split_hooks(
    values: Mapping[str, Any], source: str
) -> tuple[dict[str, Callable[..., Any]], dict[str, Any]]:
    """(the hooks, the rest) of ``values``, for ``prefork_lb.run(app, post_fork=f, ...)``,
    which takes hooks by name as a config file does; a hook that is not callable is a
    :class:`ConfigError` that names ``source``."""
    hooks: dict[str, Callable[..., Any]] = {}
    rest: dict[str, Any] = {}
    for name, value in values.items():
        if name not in HOOK_NAMES:
            rest[name] = value
        elif not callable(value):
            raise ConfigError(f"{source}: hook {name} is not callable")
        else:
            hooks[name] = value
    return hooks, rest


def _ours(name: str, value: Any, g: gn.GunicornName | None) -> tuple[str, Any]:
    """(our setting, the value in our shape) for a setting named ``name``, ours or gunicorn's."""
    if g is None or g.kind != gn.SETTING:
        return name, value
    return g.target, (g.convert(value) if g.convert is not None else value)


def gunicorn_keywords(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``prefork_lb.run(app, accesslog="-", loglevel="DEBUG")``: gunicorn's names as ours, and
    the gunicorn names given that have no equivalent here (for the one warning line)."""
    out: dict[str, Any] = {}
    unsupported: list[str] = []
    for name, value in values.items():
        g = gn.BY_GUNICORN_NAME.get(name)
        if name in HOOK_NAMES or g is None or g.kind in (gn.HOOK, gn.CONFIG):
            out[name] = value  # an unknown name: build() refuses it in one line
        elif name in BY_NAME or g.kind == gn.SETTING:
            target, converted = _ours(name, value, g)
            out[target] = converted
        else:  # wsgi_app too: run() takes the app object
            unsupported.append(name)
    unsupported += [
        name for name in HOOK_NAMES if name in values and gn.BY_GUNICORN_NAME[name].kind == gn.NONE
    ]
    return out, unsupported


def _ignored(cfg: Config, setting: Setting[Any], command: str, source: str) -> bool:
    """Whether ``setting`` does not apply to ``command``: then a config file's or an
    environment variable's value for it is ignored, with a warning (a file or environment
    shared by the server and the proxy is no error)."""
    if setting.applies_to(command):
        return False
    cfg.warnings.append(f"{source}: {setting.name} does not apply to {COMMAND_LINES[command]}; ignored")
    return True


# Looked for in the working directory, in this order, when nothing names a config file.
DISCOVERED = ("prefork_lb.conf.py", "gunicorn.conf.py")


def _run_file(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        return runpy.run_path(path)
    except SyntaxError as exc:
        raise ConfigError(f"config file {path!r}: syntax error at line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:  # the user's file raised: one line, not a traceback
        raise ConfigError(f"config file {path!r} failed: {type(exc).__name__}: {exc}") from None


def load_config_file(cfg: Config, path: str, command: str = SERVER) -> None:
    """Run a Python config file; its module-level names that are settings or hooks apply, by
    prefork_lb's names or gunicorn's (``accesslog``, ``loglevel``: settings/gunicorn_names.py).
    Settings of another command are ignored with a warning; so are gunicorn's settings without
    an equivalent here, all named in one warning line."""
    source = f"config file {path!r}"
    unsupported: list[str] = []
    for name, value in _run_file(path).items():
        if name.startswith("_") or name == "config":
            continue
        g = gn.BY_GUNICORN_NAME.get(name)
        if name in HOOK_NAMES or (g is not None and g.kind == gn.HOOK):
            if not callable(value):
                raise ConfigError(f"{source}: hook {name} is not callable")
            if g is not None and g.kind == gn.NONE:  # pre_request, post_request
                unsupported.append(name)
            cfg.hooks[name] = value
            cfg.sources[name] = source
        elif name in BY_NAME or (g is not None and g.kind == gn.SETTING):
            target, value = _ours(name, value, g)
            if not _ignored(cfg, BY_NAME[target], command, source):
                cfg.set(target, value, source if target == name else f"{source}, as {name}")
        elif name == "wsgi_app":
            cfg.app_uri = str(value)
            cfg.sources[name] = source
        elif g is not None and g.kind in (gn.NONE, gn.ACTION):
            unsupported.append(name)
    if unsupported:
        cfg.warnings.append(gn.unsupported_warning(unsupported, source))


def discover_config(cwd: str | None = None) -> str | None:
    """The config file found in ``cwd`` (the working directory): :data:`DISCOVERED`'s first."""
    for name in DISCOVERED:
        path = os.path.join(cwd or os.getcwd(), name)
        if os.path.isfile(path):
            return path
    return None


def apply_env(cfg: Config, environ: Mapping[str, str], command: str = SERVER) -> None:
    for s in SETTINGS:
        if s.name == "config":
            continue
        if not s.applies_to(command):  # a generic variable (WEB_CONCURRENCY) is other programs' too
            if environ.get(s.env):
                _ignored(cfg, s, command, f"environment variable {s.env}")
            continue
        for var in (*s.extra_env, s.env):  # the prefixed name wins over a generic one
            if var in environ and environ[var] != "":
                cfg.set(s.name, environ[var], f"environment variable {var}")


def build(
    cli_values: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    app_uri: str | None = None,
    source: str = "command line",
    command: str = SERVER,
    arg_layers: Sequence[tuple[Mapping[str, Any], str]] = (),
    discover: bool = False,
    app_source: str | None = None,
) -> Config:
    """Resolve defaults < config file < environment < ``arg_layers`` (the flags of
    ``GUNICORN_CMD_ARGS`` then ``PREFORK_LB_CMD_ARGS``, each (values, source)) < command line
    (``cli_values``; ``source`` names them in errors: ``"run()"`` for prefork_lb.run's keywords)
    for ``command``. The config file: the last layer's ``config``, else ``PREFORK_LB_CONFIG``,
    else (``discover``) one found in the working directory. A config file's or environment
    variable's setting of another command is ignored (``cfg.warnings`` says so); the command
    line has only ``command``'s flags. ``app_source`` says where ``app_uri`` came from (default:
    ``source``)."""
    environ = os.environ if environ is None else environ
    cfg = defaults()
    layers = [*arg_layers, (cli_values, source)]
    config_path, config_source = None, ""
    for values, where in layers:
        if values.get("config"):
            config_path, config_source = values["config"], where
    if not config_path and environ.get(BY_NAME["config"].env):
        config_path, config_source = (
            environ[BY_NAME["config"].env],
            f"environment variable {BY_NAME['config'].env}",
        )
    if not config_path and discover:
        config_path, config_source = discover_config(), "found in the working directory"
    if config_path:
        load_config_file(cfg, config_path, command)
        cfg.set("config", os.path.abspath(config_path), config_source)
    apply_env(cfg, environ, command)
    for values, where in layers:
        for name, value in values.items():
            if value is not None and name != "config":
                cfg.set(name, value, where)
    if app_uri:
        cfg.app_uri = app_uri
        cfg.sources["wsgi_app"] = app_source or source
    return cfg


def reference_markdown(settings: Iterable[Setting[Any]] = SETTINGS) -> str:
    """The text of docs/reference/settings.md (a test keeps the file in step)."""
    lines = [
        "# Settings reference",
        "",
        "Generated from `prefork_lb/config.py` by `python -m prefork_lb.config > docs/reference/settings.md`;",
        "do not edit by hand.",
        "",
        "Each setting can be given, lowest precedence first, as its default, in a Python config file",
        "(`-c FILE`, else `./prefork_lb.conf.py` or `./gunicorn.conf.py`; a module-level name, or",
        "gunicorn's name for it: [migrating from gunicorn](../gunicorn.md)), as an environment",
        "variable, as a flag in `GUNICORN_CMD_ARGS` then `PREFORK_LB_CMD_ARGS`, or on the command line.",
        "`--print-config` shows every value and where it came from.",
        "`prefork_lb MODULE:APP --help` shows the common flags, `--help-all` every flag (both with",
        'their defaults). A setting marked "only for" is not a flag of the other command',
        "(`prefork_lb proxy -w 4` is refused); a config file or environment variable that sets it for",
        "the other command is ignored with a warning in the log, so both can share one config file.",
        "",
    ]
    section = None
    for s in settings:
        if s.section != section:
            section = s.section
            lines += [f"## {section}", ""]
        lines.append(f"### `{s.name}`")
        lines.append("")
        if s.flags and s.cli:
            lines.append(f"- flag: `{', '.join(s.flags)}`" + (" (repeatable)" if s.append else ""))
        envs = ", ".join(f"`{e}`" for e in (s.env, *s.extra_env))
        lines.append(f"- environment: {envs}")
        if s.choices:
            lines.append(f"- choices: {', '.join(f'`{c}`' for c in s.choices)}")
        lines.append(f"- default: {s.default_text()}")
        if s.commands != COMMANDS:
            lines.append("- only for: " + ", ".join(f"`{COMMAND_LINES[c]}`" for c in s.commands))
        lines.append("")
        lines.append(s.help)
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    # ``python -m prefork_lb.config gunicorn``: docs/gunicorn.md's table of gunicorn's settings
    print(gn.markdown_table(BY_NAME) if sys.argv[1:] == ["gunicorn"] else reference_markdown(), end="")
