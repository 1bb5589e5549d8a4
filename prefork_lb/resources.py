"""The CPUs and memory this process may use: the cgroup's limits and the CPU affinity mask.

Containers (Docker, Kubernetes, systemd slices) limit a process with a cgroup CPU quota and a
cpuset, while ``os.cpu_count()`` still counts every CPU of the host; a server sized from it starts
too many workers and gets throttled or OOM-killed. The defaults of ``--workers`` and
``--offload-processes`` and a ``--max-rss`` given as a percentage come from here.

Two layers. The parsers and decisions (``parse_*``, ``cgroup_dirs``, ``usable_cpus``,
``max_rss_mib``) are pure: they take file contents and numbers, never touch the file system, and
never raise on malformed input (a file they cannot read says "no limit"). :class:`CgroupReader`
is the only I/O: it reads ``/proc/self/cgroup``, ``/proc/self/mountinfo`` and the limit files
under a ``root`` directory (``/`` in production, a fake tree in the tests), and any OSError is
again "no limit", so a host without cgroups falls back to ``os.cpu_count()``.

Invariants:

* Usable CPUs = min(affinity count, ceil(quota / period)), at least 1. The quota is rounded UP: a
  1.5-CPU quota gives 2 (each worker may still use a whole CPU at times; rounding down would
  leave a third of the quota unused), a quota below one CPU gives 1.
* A limit is looked up in the process's own cgroup and in every ancestor up to the mount point
  (a parent's limit binds its children); the tightest wins. v1 (a ``cpu``/``memory`` hierarchy
  of its own) is preferred over v2 for a controller that v1 mounts (the "hybrid" layout);
  otherwise the unified (v2) hierarchy is read.
* "max", ``-1`` and v1's huge "unlimited" values (>= 2**60 bytes) mean no limit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNLIMITED_BYTES = 1 << 60  # v1 writes 9223372036854771712 (page-rounded LONG_MAX) for "none"


@dataclass(frozen=True)
class Mount:
    """One cgroup line of /proc/self/mountinfo."""

    root: str  # the cgroup path this mount shows at its mount point ("/" unless bind-mounted)
    point: str  # where it is mounted
    version: int  # 1 or 2
    controllers: frozenset[str]  # v1: the controllers of this hierarchy ("cpu", "cpuacct", ...)


# --- pure parsers -------------------------------------------------------------------------------


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` -> {controller: cgroup path}; the v2 line ("0::/path") is under "".

    v1 lines are "ID:cpu,cpuacct:/path" (one key per controller); ``name=systemd`` lines are
    kept under their name, and lines that do not parse are skipped."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            paths[""] = path
            continue
        for c in controllers.split(","):
            if c:
                paths[c] = path
    return paths


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup (v1) and cgroup2 mounts of ``/proc/self/mountinfo``; other lines are skipped.

    A line is "ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS"."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 5 or len(fields) < sep + 2:
            continue
        fstype = fields[sep + 1]
        root, point = _unescape(fields[3]), _unescape(fields[4])
        if fstype == "cgroup2":
            mounts.append(Mount(root, point, 2, frozenset()))
        elif fstype == "cgroup":
            opts = fields[sep + 3].split(",") if len(fields) > sep + 3 else []
            mounts.append(Mount(root, point, 1, frozenset(opts)))
    return mounts


def parse_cpu_max(text: str) -> float | None:
    """v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD") -> the quota in CPUs, None if none."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return _ratio(parts[0], parts[1])


def parse_cfs(quota: str, period: str) -> float | None:
    """v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` -> the quota in CPUs (-1: None)."""
    return _ratio(quota.strip(), period.strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return q / p


def parse_memory_limit(text: str) -> int | None:
    """v2 ``memory.max`` or v1 ``memory.limit_in_bytes`` -> bytes, None for no limit."""
    s = text.strip()
    if s == "max":
        return None
    try:
        n = int(s)
    except ValueError:
        return None
    if n <= 0 or n >= UNLIMITED_BYTES:
        return None
    return n


# --- pure decisions -----------------------------------------------------------------------------


def cgroup_dirs(paths: dict[str, str], mounts: Iterable[Mount], controller: str) -> list[str]:
    """The directories holding ``controller``'s files for this process, its own cgroup first and
    then each ancestor up to the mount point; [] when no hierarchy has it.

    ``paths`` and ``mounts`` are the parsed /proc/self/cgroup and mountinfo. The process's cgroup
    path is relative to the hierarchy's root; a mount shows the cgroup ``mount.root`` at its
    point, so the directory is the point plus the path below that root. Inside a cgroup
    namespace the path is often "/" (the container's own cgroup is the namespace's root, which
    the mount shows): then the mount point itself is read."""
    mounts = list(mounts)
    v1 = [m for m in mounts if m.version == 1 and controller in m.controllers]
    if v1 and controller in paths:
        mount, path = v1[0], paths[controller]
    else:
        v2 = [m for m in mounts if m.version == 2]
        if not v2 or "" not in paths:
            return []
        mount, path = v2[0], paths[""]
    root = mount.root.rstrip("/")
    if path == root or path.startswith(root + "/"):
        rel = path[len(root) :].strip("/")
    else:  # the cgroup is outside what the mount shows (another namespace): the mount is all we see
        rel = ""
    dirs = []
    parts = [p for p in rel.split("/") if p and p != ".."]
    while True:
        dirs.append("/".join([mount.point.rstrip("/"), *parts]) or "/")
        if not parts:
            return dirs
        parts.pop()


def tightest(limits: Iterable[float | None]) -> float | None:
    """The smallest of the limits that exist (None: none does)."""
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def usable_cpus(affinity: int | None, quota: float | None, fallback: int | None) -> int:
    """min(the affinity count, the quota rounded up), at least 1.

    ``affinity`` is ``len(os.sched_getaffinity(0))`` (None where the OS has none); ``fallback``
    is ``os.cpu_count()``, used when there is no affinity count."""
    cpus = affinity if affinity else (fallback or 1)
    if quota is not None and quota > 0:
        cpus = min(cpus, math.ceil(quota - 1e-9))  # 2.0000000001 from float noise is still 2
    return max(1, cpus)


def parse_percent(value: str) -> float | None:
    """ "80%" -> 80.0; None when ``value`` is not a percentage."""
    s = value.strip()
    if not s.endswith("%"):
        return None
    try:
        pct = float(s[:-1])
    except ValueError:
        return None
    return pct if 0 < pct <= 100 else None


def server_workers(cfg: Any) -> int:
    """The workers of the whole server, which share its cgroup memory limit and its CPUs: a
    --mount pool's config (prefork_lb.pools.pool_config) has the pool's count in ``workers``."""
    return int(getattr(cfg, "server_workers", None) or cfg.workers)


def max_rss_mib(percent: float, memory_limit: int, workers: int) -> int:
    """--max-rss N%: each worker's share of N% of the cgroup memory limit, in MiB (at least 1).

    The limit binds all workers together (the container is OOM-killed when their sum passes
    it), so N% of it is divided among the workers: 80% of 2 GiB with 4 workers is 409 MiB each.
    ``workers`` is the most that may run (--max-workers when autoscaling, else --workers)."""
    share = memory_limit * percent / 100 / max(1, workers)
    return max(1, int(share) >> 20)


# --- the I/O layer ------------------------------------------------------------------------------


class CgroupReader:
    """Reads this process's cgroup limits under ``root`` ("/" in production; a fake tree in the
    tests). Every file that is missing or unreadable counts as "no limit"."""

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)

    def read(self, path: str) -> str | None:
        try:
            return (self.root / path.lstrip("/")).read_text(encoding="ascii", errors="replace")
        except (OSError, ValueError):
            return None

    def dirs(self, controller: str) -> list[str]:
        cgroup, mountinfo = self.read("/proc/self/cgroup"), self.read("/proc/self/mountinfo")
        paths = parse_proc_cgroup(cgroup or "")
        mounts = parse_mountinfo(mountinfo or "")
        if not mounts:  # no mountinfo (or no cgroup in it): the usual place of the unified tree
            mounts = [Mount("/", "/sys/fs/cgroup", 2, frozenset())]
        return cgroup_dirs(paths, mounts, controller)

    def cpu_quota(self) -> float | None:
        """The tightest CPU quota, in CPUs, of this cgroup and its ancestors (None: none)."""
        quotas: list[float | None] = []
        for d in self.dirs("cpu"):
            text = self.read(f"{d}/cpu.max")
            if text is not None:
                quotas.append(parse_cpu_max(text))
                continue
            quota, period = self.read(f"{d}/cpu.cfs_quota_us"), self.read(f"{d}/cpu.cfs_period_us")
            if quota is not None and period is not None:
                quotas.append(parse_cfs(quota, period))
        return tightest(quotas)

    def memory_limit(self) -> int | None:
        """The tightest memory limit, in bytes, of this cgroup and its ancestors (None: none)."""
        limits: list[float | None] = []
        for d in self.dirs("memory"):
            text = self.read(f"{d}/memory.max")
            if text is None:
                text = self.read(f"{d}/memory.limit_in_bytes")
            if text is not None:
                limits.append(parse_memory_limit(text))
        found = tightest(limits)
        return None if found is None else int(found)


def affinity_count() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no sched_getaffinity
        return None


def cpu_count(root: str | os.PathLike[str] = "/") -> int:
    """The CPUs this process may use: the default of --workers, and what the offload pools share."""
    return usable_cpus(affinity_count(), CgroupReader(root).cpu_quota(), os.cpu_count())


def memory_limit(root: str | os.PathLike[str] = "/") -> int | None:
    """The cgroup memory limit of this process in bytes (None: none)."""
    return CgroupReader(root).memory_limit()


def resolve_max_rss(value: int | str, workers: int, root: str | os.PathLike[str] = "/") -> int:
    """--max-rss as MiB per worker: a size as given, N% through :func:`max_rss_mib`.

    ValueError (the line the user sees) when N% is given and no cgroup memory limit is found."""
    if isinstance(value, int):
        return value
    pct = parse_percent(value)
    limit = memory_limit(root)
    if pct is None or limit is None:
        raise ValueError(f"--max-rss {value}: no cgroup memory limit found; give a size")
    return max_rss_mib(pct, limit, workers)
