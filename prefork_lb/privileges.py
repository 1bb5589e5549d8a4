"""``--user``, ``--group`` and ``--umask``: who the workers run as, and the master's umask.

As gunicorn does: the master keeps the identity it was started with (it binds the listeners
and may need root for a low port), each WSGI worker switches to ``--user``/``--group`` right
after fork, before it imports the app, so the app never runs as root. The log files are handed
to that user first (a worker reopens them on USR1). ``--umask`` is set once in the master at
start, so the pid file, unix sockets and log files it makes, and the workers it forks, get it.

Invariants: with neither --user nor --group nothing here changes anything; a switch that
fails ends the worker's boot with one line (the master reports it and stops, as for an app
that fails to import).
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Identity",
    "apply_umask",
    "check_can_switch",
    "hand_over_logs",
    "identity",
    "prepare_master",
    "switch",
]


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    name: str | None  # the user's name, for its supplementary groups (None: only gid)


def identity(user: str | None, group: str | None) -> Identity | None:
    """The identity ``--user``/``--group`` ask for, or None when neither is set."""
    if user is None and group is None:
        return None
    if user is not None:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid, name = pw.pw_uid, pw.pw_gid, pw.pw_name
    else:
        uid, gid, name = os.getuid(), os.getgid(), None
    if group is not None:
        gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    return Identity(uid, gid, name)


def check_can_switch(ident: Identity | None) -> str | None:
    """Why this process cannot switch to ``ident`` (one line), or None when it can."""
    if ident is None or os.geteuid() == 0:
        return None
    if (ident.uid, ident.gid) == (os.getuid(), os.getgid()):
        return None
    return "--user/--group need the master to run as root (it is not)"


def switch(ident: Identity | None) -> None:
    """Become ``ident`` (a worker, after fork): groups first, then the gid, then the uid."""
    if ident is None or (ident.uid, ident.gid) == (os.getuid(), os.getgid()):
        return
    if os.geteuid() == 0:
        if ident.name is not None:
            os.initgroups(ident.name, ident.gid)
        else:
            os.setgroups([ident.gid])
    os.setgid(ident.gid)
    os.setuid(ident.uid)


def hand_over_logs(ident: Identity | None, paths: list[Any]) -> None:
    """Make each log file (a path, not '-') exist and belong to ``ident``, in the master before
    any fork, so the workers can open and reopen them after switching."""
    if ident is None or os.geteuid() != 0:
        return
    for path in paths:
        if not path or path == "-":
            continue
        with open(path, "a"):
            pass
        os.chown(path, ident.uid, ident.gid)


def apply_umask(umask: int | None) -> None:
    if umask is not None:
        os.umask(umask)


def prepare_master(cfg: Any) -> None:
    """At the master's start, before its error log is opened: the umask, then the log files
    handed to --user."""
    apply_umask(cfg.umask)
    hand_over_logs(identity(cfg.user, cfg.group), [cfg.access_logfile, cfg.error_logfile])
