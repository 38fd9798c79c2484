"""A host's health, as Envoy's host health flags: one int of bits on ``Host.health_flags``.

0 is healthy. Whoever sets or clears a flag (active health checks, outlier detection) calls
``Cluster.health_changed()`` afterwards, which rebuilds what the load balancer picks from and
applies the panic threshold (``panic``). The bits are udsproxy's; the names, and their text in the
admin's /clusters (``flag_text``), are Envoy's.
"""

from __future__ import annotations

__all__ = [
    "ACTIVE_HC_TIMEOUT",
    "EXCLUDED",
    "FAILED_ACTIVE_HC",
    "FAILED_OUTLIER_CHECK",
    "PENDING_ACTIVE_HC",
    "PENDING_DYNAMIC_REMOVAL",
    "UNHEALTHY",
    "flag_text",
    "flags_from_stats",
    "flags_to_stats",
    "health_status",
    "panic",
]

FAILED_ACTIVE_HC = 1  # the last active health checks failed (unhealthy_threshold of them)
FAILED_OUTLIER_CHECK = 2  # ejected by outlier detection
# No traffic before the first active health check passes (when so configured): Envoy counts such
# a host as excluded, neither healthy nor unhealthy, so it is never picked, not even in panic.
PENDING_ACTIVE_HC = 4
PENDING_DYNAMIC_REMOVAL = 8  # left service discovery, kept until its health check fails
ACTIVE_HC_TIMEOUT = 16  # its last active health check timed out (set with FAILED_ACTIVE_HC)

UNHEALTHY = FAILED_ACTIVE_HC | FAILED_OUTLIER_CHECK  # Envoy's coarse health: unhealthy
EXCLUDED = PENDING_ACTIVE_HC | PENDING_DYNAMIC_REMOVAL  # out of the load balancer altogether

# Envoy's order (HostUtility::healthFlagsToString)
_TEXT = (
    (FAILED_ACTIVE_HC, "/failed_active_hc"),
    (FAILED_OUTLIER_CHECK, "/failed_outlier_check"),
    (PENDING_DYNAMIC_REMOVAL, "/pending_dynamic_removal"),
    (PENDING_ACTIVE_HC, "/pending_active_hc"),
    (ACTIVE_HC_TIMEOUT, "/active_hc_timeout"),
)

# Envoy's priority load: a level's health is scaled by the overprovisioning factor (1.4) before
# the panic decision, so a level at or above 100/1.4 % healthy is never in panic.
_OVERPROVISIONING = 140


def flag_text(flags: int) -> str:
    """/clusters' ``health_flags``: ``healthy``, or each flag set as ``/name``."""
    if not flags & UNHEALTHY and not flags & EXCLUDED:
        return "healthy"
    return "".join(text for bit, text in _TEXT if flags & bit)


_STAT_PREFIX = "_health_flag_"


def flags_to_stats(flags: int, out: dict[str, int]) -> None:
    """Add the flags to a host's /clusters counts as one 0/1 count per bit, so that the sum over
    the workers (each has its own view: outlier detection is per process) says which flags some
    worker has set."""
    bit = 1
    while bit <= flags:
        if flags & bit:
            out[f"{_STAT_PREFIX}{bit}"] = 1
        bit <<= 1


def flags_from_stats(stats: dict[str, int]) -> int:
    """Take the counts ``flags_to_stats`` added (summed) back out of ``stats``: the flags any
    worker has set."""
    flags = 0
    for key in [k for k in stats if k.startswith(_STAT_PREFIX)]:
        if stats.pop(key):
            flags |= int(key[len(_STAT_PREFIX) :])
    return flags


def health_status(flags: int) -> dict[str, object]:
    """/clusters?format=json's ``health_status`` (admin.v3.HostHealthStatus): the EDS status
    (always HEALTHY: udsproxy has no EDS) and a true field per flag set."""
    out: dict[str, object] = {"eds_health_status": "HEALTHY"}
    if flags & FAILED_ACTIVE_HC:
        out["failed_active_health_check"] = True
    if flags & FAILED_OUTLIER_CHECK:
        out["failed_outlier_check"] = True
    if flags & PENDING_DYNAMIC_REMOVAL:
        out["pending_dynamic_removal"] = True
    if flags & PENDING_ACTIVE_HC:
        out["pending_active_hc"] = True
    if flags & ACTIVE_HC_TIMEOUT:
        out["active_hc_timeout"] = True
    return out


def panic(healthy: int, total: int, threshold: float) -> bool:
    """Whether a host set with ``healthy`` of ``total`` (not excluded) hosts is in panic, for a
    ``healthy_panic_threshold`` in percent (0 disables panic). Envoy's rule for one priority:
    in panic when the healthy percentage is below the threshold, unless the set is at full
    availability once overprovisioned."""
    if threshold <= 0 or healthy >= total:
        return False
    percent = 100.0 * healthy / total
    if percent * _OVERPROVISIONING / 100 >= 100:
        return False
    return percent < threshold
