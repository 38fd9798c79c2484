"""How many CPUs this process may really use: the default ``--concurrency``.

``os.cpu_count()`` is the node's core count. In a pod limited to 500m on a 32-core node that
would start 32 workers for half a CPU. The limit is the smaller of the CPU affinity mask
(cpusets, ``taskset``) and the cgroup CPU quota, rounded up, at least 1:

- cgroup v2: ``cpu.max`` (``<quota> <period>`` or ``max <period>``) of this process's cgroup
  and of every ancestor up to the mount's root (a parent's limit binds its children);
- cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1 = no quota) the same way, in the
  hierarchy that has the ``cpu`` controller.

Files are read under ``root`` so tests give a fake tree; nothing here raises on a missing or
odd file: no readable limit means no limit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["cgroup_cpu_limit", "default_concurrency", "usable_cpus"]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _mounts(root: Path) -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fstype, super options) of every cgroup mount."""
    found = []
    for line in (_read(root / "proc/self/mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        found.append((fields[3], fields[4], tail[0], set(tail[2].split(","))))
    return found


def _ancestry(mount_root: str, mount_point: str, cgroup_path: str, root: Path) -> list[Path]:
    """The cgroup's directory and its ancestors inside the mount, deepest first."""
    rel = cgroup_path
    if mount_root != "/" and (rel == mount_root or rel.startswith(mount_root + "/")):
        rel = rel[len(mount_root) :]  # the mount shows a subtree (a container's cgroup ns)
    parts = [p for p in rel.split("/") if p and p not in (".", "..")]
    base = root / mount_point.lstrip("/")
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_limit(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if text is None:
        return None
    fields = text.split()
    try:
        if len(fields) >= 1 and fields[0] != "max":
            period = float(fields[1]) if len(fields) > 1 else 100000.0
            quota = float(fields[0])
            return quota / period if quota > 0 and period > 0 else None
    except ValueError:
        return None
    return None


def _v1_limit(directory: Path) -> float | None:
    quota_text = _read(directory / "cpu.cfs_quota_us")
    period_text = _read(directory / "cpu.cfs_period_us")
    if quota_text is None or period_text is None:
        return None
    try:
        quota, period = float(quota_text), float(period_text)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """The tightest CPU quota (in CPUs, e.g. 0.5) over this process's cgroups, or None."""
    limits: list[float] = []
    mounts = _mounts(root)
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2 (unified)
            wanted = [m for m in mounts if m[2] == "cgroup2"]
            reader = _v2_limit
        elif "cpu" in controllers.split(","):
            wanted = [m for m in mounts if m[2] == "cgroup" and "cpu" in m[3]]
            reader = _v1_limit
        else:
            continue
        for mount_root, mount_point, _fstype, _opts in wanted:
            for directory in _ancestry(mount_root, mount_point, path, root):
                limit = reader(directory)
                if limit is not None:
                    limits.append(limit)
    return min(limits) if limits else None


def default_concurrency(quota: float | None, affinity: int | None) -> int:
    """The smaller of the affinity count and the quota rounded up; at least 1."""
    candidates = [n for n in (affinity,) if n]
    if quota is not None and quota > 0:
        candidates.append(math.ceil(quota - 1e-9))  # 2.0000001 from float division is 2
    return max(1, min(candidates)) if candidates else 1


def usable_cpus() -> int:
    """The default ``--concurrency`` for this process."""
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    return default_concurrency(cgroup_cpu_limit(), affinity)
