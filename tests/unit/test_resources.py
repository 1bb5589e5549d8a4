"""prefork_lb.resources: the usable CPUs and the cgroup memory limit, from fake cgroup trees.

Each tree is written under tmp_path the way the kernel shows it: /proc/self/cgroup,
/proc/self/mountinfo and the controller files, so the reader runs exactly as on a real host.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prefork_lb import resources
from prefork_lb.config import ConfigError, build
from prefork_lb.resources import (
    CgroupReader,
    Mount,
    cgroup_dirs,
    max_rss_mib,
    parse_cfs,
    parse_cpu_max,
    parse_memory_limit,
    parse_mountinfo,
    parse_proc_cgroup,
    resolve_max_rss,
    usable_cpus,
)

GIB = 1 << 30
V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw\n"
V1_MOUNTS = (
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# -- pure parsers ---------------------------------------------------------------------------------


def test_cpu_max_quota_and_no_quota() -> None:
    assert parse_cpu_max("150000 100000\n") == 1.5
    assert parse_cpu_max("max 100000\n") is None
    for bad in ("", "garbage", "100000", "x 100000", "100000 0", "-5 100000"):
        assert parse_cpu_max(bad) is None, bad


def test_cfs_quota_minus_one_is_none() -> None:
    assert parse_cfs("50000\n", "100000\n") == 0.5
    assert parse_cfs("-1\n", "100000\n") is None
    assert parse_cfs("oops", "100000") is None


def test_memory_limit_max_and_v1_unlimited_are_none() -> None:
    assert parse_memory_limit("2147483648\n") == 2 * GIB
    assert parse_memory_limit("max\n") is None
    assert parse_memory_limit("9223372036854771712\n") is None  # v1's "no limit"
    assert parse_memory_limit("lots") is None
    assert parse_memory_limit("0") is None


def test_proc_cgroup_v1_and_v2_lines() -> None:
    paths = parse_proc_cgroup(
        "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n1:name=systemd:/x\n0::/\nbad\n"
    )
    assert paths == {
        "cpu": "/docker/abc",
        "cpuacct": "/docker/abc",
        "memory": "/docker/abc",
        "name=systemd": "/x",
        "": "/",
    }


def test_mountinfo_finds_v1_and_v2_mounts_and_skips_others() -> None:
    text = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n" + V1_MOUNTS + "garbage line\n"
    mounts = parse_mountinfo(text)
    assert Mount("/", "/sys/fs/cgroup/cpu,cpuacct", 1, frozenset({"rw", "cpu", "cpuacct"})) in mounts
    assert Mount("/", "/sys/fs/cgroup/unified", 2, frozenset()) in mounts
    assert len(mounts) == 3


def test_dirs_walk_from_the_cgroup_up_to_the_mount_point() -> None:
    mounts = parse_mountinfo(V2_MOUNT)
    dirs = cgroup_dirs({"": "/kubepods/pod1/c1"}, mounts, "cpu")
    assert dirs == [
        "/sys/fs/cgroup/kubepods/pod1/c1",
        "/sys/fs/cgroup/kubepods/pod1",
        "/sys/fs/cgroup/kubepods",
        "/sys/fs/cgroup",
    ]


def test_dirs_of_a_bind_mounted_cgroup_start_below_its_root() -> None:
    # Docker without a cgroup namespace: the mount shows /docker/abc at the mount point.
    mounts = parse_mountinfo("35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert cgroup_dirs({"memory": "/docker/abc"}, mounts, "memory") == ["/sys/fs/cgroup/memory"]
    # a path outside what the mount shows: only the mount point can be read
    assert cgroup_dirs({"memory": "/elsewhere"}, mounts, "memory") == ["/sys/fs/cgroup/memory"]


def test_hybrid_layout_prefers_v1_for_a_controller_it_mounts() -> None:
    mounts = parse_mountinfo(V1_MOUNTS)
    paths = {"cpu": "/a", "memory": "/a", "": "/"}
    assert cgroup_dirs(paths, mounts, "cpu")[0] == "/sys/fs/cgroup/cpu,cpuacct/a"
    assert cgroup_dirs(paths, mounts, "io") == ["/sys/fs/cgroup/unified"]
    assert cgroup_dirs({}, mounts, "cpu") == []


@pytest.mark.parametrize(
    ("affinity", "quota", "fallback", "expected"),
    [
        (8, None, 8, 8),  # no quota: the affinity mask
        (8, 1.5, 8, 2),  # 1.5 CPUs rounds up
        (8, 0.25, 8, 1),  # below one CPU: 1
        (8, 2.0, 8, 2),
        (2, 4.0, 8, 2),  # the affinity mask is smaller than the quota
        (None, None, 16, 16),  # no affinity on this OS: os.cpu_count()
        (None, 3.0, None, 1),  # no CPU count at all: 1, whatever the quota
    ],
)
def test_usable_cpus(affinity: int | None, quota: float | None, fallback: int | None, expected: int) -> None:
    assert usable_cpus(affinity, quota, fallback) == expected


def test_max_rss_percent_is_a_share_per_worker() -> None:
    # 80% of a 2 GiB container split among 4 workers
    assert max_rss_mib(80, 2 * GIB, 4) == 409
    assert max_rss_mib(100, 2 * GIB, 1) == 2048
    assert max_rss_mib(1, 1 << 20, 8) == 1  # never 0 (that would switch the limit off)


# -- the reader, on fake trees --------------------------------------------------------------------


def v2_tree(root: Path, path: str, files: dict[str, str]) -> CgroupReader:
    tree(root, {"proc/self/cgroup": f"0::{path}\n", "proc/self/mountinfo": V2_MOUNT, **files})
    return CgroupReader(root)


def test_v2_quota_and_memory_limit(tmp_path: Path) -> None:
    r = v2_tree(
        tmp_path,
        "/app",
        {"sys/fs/cgroup/app/cpu.max": "150000 100000\n", "sys/fs/cgroup/app/memory.max": f"{2 * GIB}\n"},
    )
    assert r.cpu_quota() == 1.5
    assert r.memory_limit() == 2 * GIB


def test_v2_nested_takes_the_tightest_limit_of_the_ancestors(tmp_path: Path) -> None:
    r = v2_tree(
        tmp_path,
        "/kubepods/pod1/c1",
        {
            "sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "max 100000\n",
            "sys/fs/cgroup/kubepods/pod1/cpu.max": "200000 100000\n",
            "sys/fs/cgroup/kubepods/cpu.max": "400000 100000\n",
            "sys/fs/cgroup/kubepods/pod1/c1/memory.max": "max\n",
            "sys/fs/cgroup/kubepods/memory.max": f"{GIB}\n",
        },
    )
    assert r.cpu_quota() == 2.0
    assert r.memory_limit() == GIB


def test_v2_in_a_cgroup_namespace_reads_the_mount_point(tmp_path: Path) -> None:
    # Docker with cgroupns: /proc/self/cgroup says "/" and the container's limits are at the mount.
    r = v2_tree(
        tmp_path, "/", {"sys/fs/cgroup/cpu.max": "50000 100000\n", "sys/fs/cgroup/memory.max": "max\n"}
    )
    assert r.cpu_quota() == 0.5
    assert r.memory_limit() is None


def test_v1_quota_and_memory_limit(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
            "proc/self/mountinfo": V1_MOUNTS,
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": f"{512 << 20}\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        },
    )
    r = CgroupReader(tmp_path)
    assert r.cpu_quota() == 2.5
    assert r.memory_limit() == 512 << 20


def test_no_limits_anywhere(tmp_path: Path) -> None:
    r = v2_tree(tmp_path, "/", {"sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert r.cpu_quota() is None
    assert r.memory_limit() is None
    assert CgroupReader(tmp_path / "nothing-here").cpu_quota() is None  # no /proc at all


def test_no_mountinfo_assumes_the_unified_tree_at_sys_fs_cgroup(tmp_path: Path) -> None:
    tree(tmp_path, {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "100000 100000\n"})
    assert CgroupReader(tmp_path).cpu_quota() == 1.0


def test_malformed_files_fall_back_to_the_cpu_count_without_a_crash(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "proc/self/cgroup": "\x00\x01 not a cgroup file\n0::relative\n",
            "proc/self/mountinfo": "nonsense - \n - cgroup2\n" + V2_MOUNT,
            "sys/fs/cgroup/cpu.max": "\xff\xfe garbage",
            "sys/fs/cgroup/memory.max": "-",
        },
    )
    assert CgroupReader(tmp_path).cpu_quota() is None
    assert CgroupReader(tmp_path).memory_limit() is None
    assert resources.cpu_count(tmp_path) == resources.usable_cpus(
        resources.affinity_count(), None, os.cpu_count()
    )


def test_cpu_count_is_capped_by_the_quota(tmp_path: Path) -> None:
    v2_tree(tmp_path, "/", {"sys/fs/cgroup/cpu.max": "50000 100000\n"})
    assert resources.cpu_count(tmp_path) == 1


def test_resolve_max_rss(tmp_path: Path) -> None:
    v2_tree(tmp_path, "/", {"sys/fs/cgroup/memory.max": f"{2 * GIB}\n"})
    assert resolve_max_rss("80%", 4, tmp_path) == 409
    assert resolve_max_rss(150, 4, tmp_path) == 150
    none = tmp_path / "none"
    v2_tree(none, "/", {"sys/fs/cgroup/memory.max": "max\n"})
    with pytest.raises(ValueError, match=r"^--max-rss 80%: no cgroup memory limit found; give a size$"):
        resolve_max_rss("80%", 4, none)


# -- the settings that use them -------------------------------------------------------------------


def test_max_rss_setting_takes_mib_or_a_percentage() -> None:
    assert build({"max_rss": "150"}, environ={}).max_rss == 150
    assert build({"max_rss": "80%"}, environ={}).max_rss == "80%"
    assert build({}, environ={"PREFORK_LB_MAX_RSS": "12.5%"}).max_rss == "12.5%"
    for bad in ("0%", "101%", "x%", "-3"):
        with pytest.raises(ConfigError, match="max_rss"):
            build({"max_rss": bad}, environ={})


def test_workers_default_follows_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "affinity_count", lambda: 1)
    assert build({}, environ={}).workers == 1


def test_a_worker_divides_the_percentage_by_the_most_workers_that_may_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from prefork_lb.worker.child import max_rss

    monkeypatch.setattr(resources, "memory_limit", lambda root="/": 4 * GIB)
    assert max_rss(build({"max_rss": "50%", "workers": 2}, environ={})) == 1024
    assert max_rss(build({"max_rss": "50%", "workers": 2, "max_workers": 4}, environ={})) == 512
    assert max_rss(build({"max_rss": "300", "workers": 2}, environ={})) == 300
    monkeypatch.setattr(resources, "memory_limit", lambda root="/": None)
    assert max_rss(build({"max_rss": "50%"}, environ={})) == 0  # prefork_lb.run() skips the CLI check
    assert "--max-rss 50%: no cgroup memory limit found; give a size" in caplog.text
