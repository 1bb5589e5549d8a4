"""How one setting is declared: the :class:`Setting` descriptor and the converters it uses.

A ``Setting[T]`` is a class attribute of :class:`prefork_lb.config.Config` (through the section
classes in this package). Its converter is ``Callable[[Any], T]``, so mypy reads ``cfg.workers``
as ``int``; the same object carries everything else the registry needs: default, flags,
environment variable, section, help.

Invariants:

- A converter is the only validation of a value: every source (config file, environment,
  command line, code that overrides a value) goes through :meth:`Setting.convert`, which turns
  any failure into one :class:`ConfigError` line naming the source and the setting.
- ``Setting`` is a non-data descriptor (``__get__`` only): a resolved value lives in the
  instance's ``__dict__`` under the setting's name, so reading ``cfg.workers`` costs what a
  plain attribute costs; the descriptor answers only class access (``Config.workers`` is the
  ``Setting``). Writes go through ``Config.set``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

ENV_PREFIX = "PREFORK_LB_"

# The commands a setting can apply to (``Setting(commands=...)``): the server
# (``python -m prefork_lb MODULE:APP``) and the standalone proxy (``python -m prefork_lb proxy``).
SERVER = "server"
PROXY = "proxy"
COMMANDS = (SERVER, PROXY)
COMMAND_LINES = {SERVER: "prefork_lb MODULE:APP", PROXY: "prefork_lb proxy"}

# --strategy's names (prefork_lb.balance.registry), also a --mount key's values
STRATEGIES = (
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "random",
    "p2c",
    "least_latency",
    "hash",
    "sticky",
)

T = TypeVar("T")


class ConfigError(Exception):
    """A user error in a setting: reported as one line, exit code 2."""


class Setting(Generic[T]):
    """One setting: converter, default, help, and how it is given on the command line.

    ``default`` is a value, or a function of no arguments computing it (a fresh list per
    config, the CPU count); ``default_doc`` says how a computed default reads in the docs.
    The name is the attribute name the setting is declared under (``__set_name__``).

    ``commands`` are the commands that use it (:data:`COMMANDS`): only their parsers have its
    flag, and a config file or environment variable that sets it for another command is
    ignored with a warning. ``common`` puts it in the short ``--help`` (every flag is in
    ``--help-all``), as ``summary`` or else the help's first sentence.
    """

    name: str

    def __init__(
        self,
        converter: Callable[[Any], T],
        default: T | Callable[[], T],
        help: str,
        *,
        flags: tuple[str, ...] = (),
        section: str = "Server",
        choices: tuple[str, ...] | None = None,
        metavar: str | None = None,
        append: bool = False,  # flag may be repeated; values accumulate
        extra_env: tuple[str, ...] = (),  # further env vars honoured (e.g. WEB_CONCURRENCY)
        default_doc: str | None = None,  # how the default reads in the docs when it is computed
        cli: bool = True,
        commands: tuple[str, ...] = COMMANDS,
        common: bool = False,
        summary: str | None = None,
    ) -> None:
        self.converter = converter
        self.default = default
        self.help = help
        self.flags = flags
        self.section = section
        self.choices = choices
        self.metavar = metavar
        self.append = append
        self.extra_env = extra_env
        self.default_doc = default_doc
        self.cli = cli
        self.commands = commands
        self.common = common
        self.summary = summary

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Setting[T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> Setting[T] | T:
        if obj is None:
            return self
        # Only reached when the instance holds no value under this name: Config.__init__
        # stores every default, so this means a Config built around its __init__.
        raise AttributeError(f"setting {self.name!r} has no value on this config")

    def __repr__(self) -> str:
        return f"Setting({self.name!r}, section={self.section!r})"

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def applies_to(self, command: str) -> bool:
        return command in self.commands

    def default_text(self) -> str:
        """How the default reads in --help and the docs: ``default_doc``, else the value."""
        if self.default_doc is not None:
            return self.default_doc
        d = self.resolve_default()
        if d is None:
            return "unset"
        if isinstance(d, bool):
            return "true" if d else "false"
        if isinstance(d, str):
            return repr(d) if d else "''"
        if isinstance(d, list):
            return ", ".join(map(str, d)) or "none"
        return str(d)

    def brief(self) -> str:
        """The short --help's line: ``summary``, else the help's first sentence."""
        if self.summary is not None:
            return self.summary
        first, dot, _ = self.help.partition(". ")
        return first.rstrip(".") if dot else self.help.rstrip(".")

    def resolve_default(self) -> T:
        d = self.default
        return d() if callable(d) else d

    def convert(self, value: Any, source: str) -> T:
        if self.choices is not None and str(value) not in self.choices:
            raise ConfigError(
                f"{source}: invalid value {value!r} for {self.name} (choose from {', '.join(self.choices)})"
            )
        try:
            return self.converter(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"{source}: invalid value {value!r} for {self.name}: {plain_reason(exc)}"
            ) from None


# Python's own wording of a failed int()/float() ("invalid literal for int() with base 10: 'x'"),
# and what a user reads instead (the value is already in the line: "invalid value 'x' for ...").
_PYTHON_WORDING = (
    (
        re.compile(r"invalid literal for int\(\) with base \d+: .*|int\(\) argument must be .*"),
        "expected a whole number",
    ),
    (re.compile(r"could not convert string to float: .*|float\(\) argument must be .*"), "expected a number"),
)


def plain_reason(exc: Exception) -> str:
    """Why a converter refused a value, in the user's terms: Python's int()/float() wording
    (from a converter that calls them) is replaced, anything else is kept."""
    text = str(exc)
    for pattern, plain in _PYTHON_WORDING:
        text = pattern.sub(plain, text)
    return text


# -- converters: Any in (a string from argv or the environment, or a config file's object), T out


def whole_number(value: Any) -> int:
    """An int from text (``"8"``, argv and the environment) or a config file's int (or a float
    with nothing after the point); never a float cut short (``1.5``) nor a bool."""
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError("expected a whole number")


def finite_number(value: Any) -> float:
    """A float from text or a config file's number; not a bool, not nan or inf."""
    if not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:
            x = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(x):
                return x
    raise ValueError("expected a number")


def positive_int(value: Any) -> int:
    n = whole_number(value)
    if n < 1:
        raise ValueError(f"must be at least 1, got {n}")
    return n


def non_negative_int(value: Any) -> int:
    n = whole_number(value)
    if n < 0:
        raise ValueError(f"must be 0 or more, got {n}")
    return n


def non_negative_float(value: Any) -> float:
    x = finite_number(value)
    if x < 0:
        raise ValueError(f"must be 0 or more, got {x}")
    return x


def bind_list(value: Any) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    else:
        items = [str(v).strip() for v in value]
    items = [v for v in items if v]
    if not items:
        raise ValueError("needs at least one address")
    return items


def optional_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = (
        [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    )
    return [v for v in items if v] or None


def optional_str(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value)
    return s or None


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def user_name(value: Any) -> str | None:
    """--user: a user name or a numeric uid that exists on this machine."""
    import pwd

    s = optional_str(value)
    if s is None:
        return None
    try:
        pwd.getpwuid(int(s)) if s.isdigit() else pwd.getpwnam(s)
    except KeyError:
        raise ValueError(f"no such user: {s}") from None
    return s


def group_name(value: Any) -> str | None:
    """--group: a group name or a numeric gid that exists on this machine."""
    import grp

    s = optional_str(value)
    if s is None:
        return None
    try:
        grp.getgrgid(int(s)) if s.isdigit() else grp.getgrnam(s)
    except KeyError:
        raise ValueError(f"no such group: {s}") from None
    return s


def umask_value(value: Any) -> int | None:
    """--umask: an int (a config file's 0o22), or a string read as gunicorn does ('022' is
    octal, '0o22' and '0x12' too, '18' decimal)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        s = value.strip()
        if len(s) > 1 and s[0] == "0" and s[1].isdigit():
            s = "0o" + s[1:]
        n = int(s, 0)
    else:
        n = int(value)
    if not 0 <= n <= 0o777:
        raise ValueError(f"must be between 0 and 0o777, got {n:#o}")
    return n


def comma_joined(value: Any) -> str:
    """A comma-separated list given as a string or (config file) a list of strings."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v).strip() for v in value)
    return str(value)


def offload_count(value: Any) -> int:
    """'auto' (-1: CPUs divided among the workers) or a count (0: off)."""
    if str(value).strip().lower() in ("auto", "-1"):
        return -1
    return non_negative_int(value)


_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_FACTORY = re.compile(rf"^({_DOTTED}):({_DOTTED})$")


def offload_executor(value: Any) -> str | None:
    """The setting's converter: None for the local pool ('local', empty), else the spec,
    checked: ``dask://HOST:PORT`` (port 1-65535) or ``MODULE:FACTORY`` (dotted names)."""
    if value is None:
        return None
    spec = str(value).strip()
    if spec.lower() in ("", "local"):
        return None
    if spec.lower().startswith("dask://"):
        m = _HOST_PORT.match(spec[7:])
        if m is None or not 0 < int(m.group(2)) < 65536:
            raise ValueError(f"expected dask://HOST:PORT, not {spec!r}")
        return "dask://" + spec[7:]
    if "://" in spec:
        raise ValueError(f"unknown scheme in {spec!r} (expected dask://HOST:PORT or MODULE:FACTORY)")
    if _FACTORY.match(spec) is None:
        raise ValueError(f"expected 'local', dask://HOST:PORT or MODULE:FACTORY, not {spec!r}")
    return spec


def cpu_count() -> int:
    """The default of --workers: the CPUs this process may use (its affinity mask and its
    cgroup's CPU quota rounded up, see prefork_lb.resources), not every CPU of the host."""
    from prefork_lb.resources import cpu_count as usable

    return usable()


def rss_limit(value: Any) -> int | str:
    """--max-rss: MiB (an int, 0: off) or a percentage of the cgroup memory limit ("80%")."""
    from prefork_lb.resources import parse_percent

    s = str(value).strip()
    if s.endswith("%"):
        pct = parse_percent(s)
        if pct is None:
            raise ValueError("a percentage must be above 0% and at most 100%")
        return f"{pct:g}%"
    try:
        return non_negative_int(s)
    except ValueError as exc:
        if "whole number" in str(exc):
            raise ValueError("expected MiB (a whole number) or a percentage such as 80%") from None
        raise


def flag_and_default(cfg: Any, name: str) -> str:
    """How an error names the setting ``name`` of ``cfg``: its long flag, plus the default
    when that is the value in use, since then the user never typed it
    ("--stats-bind, default 127.0.0.1:9000")."""
    setting = getattr(type(cfg), name, None)
    if not isinstance(setting, Setting):
        return name
    flag = setting.flags[-1] if setting.flags else name
    value = getattr(cfg, name)
    if value != setting.resolve_default():
        return flag
    shown = ", ".join(value) if isinstance(value, list) else str(value)
    return f"{flag}, default {shown}"
