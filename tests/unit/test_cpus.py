"""The default --concurrency: cgroup v1/v2 CPU quota and the affinity mask, over fake files."""

from __future__ import annotations

from pathlib import Path

import pytest

from udsproxy.cpus import cgroup_cpu_limit, default_concurrency, usable_cpus

V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = (
    "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
)


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("quota", "affinity", "expected"),
    [
        (None, 32, 32),
        (0.5, 32, 1),  # a 500m pod on a 32-core node: one worker, not 32
        (1.5, 32, 2),  # rounded up
        (2.0, 32, 2),
        (2.0000000001, 32, 2),  # float noise, not a real quota
        (8.0, 2, 2),  # the affinity mask is smaller
        (None, None, 1),
        (0.01, None, 1),
    ],
)
def test_default_concurrency(quota: float | None, affinity: int | None, expected: int) -> None:
    assert default_concurrency(quota, affinity) == expected


def test_v2_quota(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/kubepods/pod1/ctr\n",
            "proc/self/mountinfo": V2_MOUNT,
            "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "50000 100000\n",
        },
    )
    assert cgroup_cpu_limit(root) == 0.5


def test_v2_max_means_no_limit_and_a_parent_limit_binds(tmp_path: Path) -> None:
    files = {
        "proc/self/cgroup": "0::/a/b\n",
        "proc/self/mountinfo": V2_MOUNT,
        "sys/fs/cgroup/a/b/cpu.max": "max 100000\n",
    }
    assert cgroup_cpu_limit(tree(tmp_path, files)) is None
    tree(tmp_path, {"sys/fs/cgroup/a/cpu.max": "300000 100000\n"})
    assert cgroup_cpu_limit(tmp_path) == 3.0


def test_v2_inside_a_cgroup_namespace(tmp_path: Path) -> None:
    # In a container the process sees its own cgroup as "/" and it is mounted at the root.
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/\n",
            "proc/self/mountinfo": V2_MOUNT,
            "sys/fs/cgroup/cpu.max": "150000 100000\n",
        },
    )
    assert cgroup_cpu_limit(root) == 1.5
    assert default_concurrency(cgroup_cpu_limit(root), 32) == 2


def test_v1_quota(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n",
            "proc/self/mountinfo": V1_MOUNTS,
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_cpu_limit(root) == 2.5


def test_v1_no_quota(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "2:cpu,cpuacct:/\n",
            "proc/self/mountinfo": V1_MOUNTS,
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_cpu_limit(root) is None


def test_v1_mount_of_a_subtree(tmp_path: Path) -> None:
    # Docker on v1 without a cgroup namespace: the mount's root is the container's cgroup.
    mounts = "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "1:cpu:/docker/abc\n",
            "proc/self/mountinfo": mounts,
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "100000\n",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_cpu_limit(root) == 1.0


def test_hybrid_takes_the_tighter(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "1:cpu:/x\n0::/y\n",
            "proc/self/mountinfo": V1_MOUNTS.replace("cpu,cpuacct rw", "cpu rw")
            + "40 31 0:40 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
            "sys/fs/cgroup/cpu,cpuacct/x/cpu.cfs_quota_us": "400000\n",
            "sys/fs/cgroup/cpu,cpuacct/x/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/unified/y/cpu.max": "200000 100000\n",
        },
    )
    assert cgroup_cpu_limit(root) == 2.0


def test_missing_or_garbled_files_mean_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/a\n",
            "proc/self/mountinfo": V2_MOUNT + "garbage line\n",
            "sys/fs/cgroup/a/cpu.max": "lots\n",
        },
    )
    assert cgroup_cpu_limit(root) is None


def test_this_machine() -> None:
    assert 1 <= usable_cpus() <= (__import__("os").cpu_count() or 1)
