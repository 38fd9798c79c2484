"""Envoy's response flags (%RESPONSE_FLAGS%) as a bit set.

Bit order follows Envoy's ``StreamInfo::ResponseFlag`` enum, which is also the order in which
Envoy prints several flags joined by ``,`` (e.g. ``UF,URX``).
"""

from __future__ import annotations

import enum

__all__ = [
    "FLAG_LONG_NAMES",
    "FLAG_SHORT_NAMES",
    "ResponseFlag",
    "render_flags",
    "render_flags_long",
]


class ResponseFlag(enum.IntFlag):
    LH = 1 << 0  # FailedLocalHealthCheck
    UH = 1 << 1  # NoHealthyUpstream
    UT = 1 << 2  # UpstreamRequestTimeout
    LR = 1 << 3  # LocalReset
    UR = 1 << 4  # UpstreamRemoteReset
    UF = 1 << 5  # UpstreamConnectionFailure
    UC = 1 << 6  # UpstreamConnectionTermination
    UO = 1 << 7  # UpstreamOverflow
    NR = 1 << 8  # NoRouteFound
    DI = 1 << 9  # DelayInjected
    FI = 1 << 10  # FaultInjected
    RL = 1 << 11  # RateLimited
    UAEX = 1 << 12  # UnauthorizedExternalService
    RLSE = 1 << 13  # RateLimitServiceError
    DC = 1 << 14  # DownstreamConnectionTermination
    URX = 1 << 15  # UpstreamRetryLimitExceeded
    SI = 1 << 16  # StreamIdleTimeout
    IH = 1 << 17  # InvalidEnvoyRequestHeaders
    DPE = 1 << 18  # DownstreamProtocolError
    UMSDR = 1 << 19  # UpstreamMaxStreamDurationReached
    RFCF = 1 << 20  # ResponseFromCacheFilter
    NFCF = 1 << 21  # NoFilterConfigFound
    DT = 1 << 22  # DurationTimeout
    UPE = 1 << 23  # UpstreamProtocolError
    NC = 1 << 24  # NoClusterFound
    OM = 1 << 25  # OverloadManagerTerminated
    DF = 1 << 26  # DnsResolutionFailed
    DO = 1 << 27  # DropOverload
    DR = 1 << 28  # DownstreamRemoteReset


FLAG_LONG_NAMES: dict[ResponseFlag, str] = {
    ResponseFlag.LH: "FailedLocalHealthCheck",
    ResponseFlag.UH: "NoHealthyUpstream",
    ResponseFlag.UT: "UpstreamRequestTimeout",
    ResponseFlag.LR: "LocalReset",
    ResponseFlag.UR: "UpstreamRemoteReset",
    ResponseFlag.UF: "UpstreamConnectionFailure",
    ResponseFlag.UC: "UpstreamConnectionTermination",
    ResponseFlag.UO: "UpstreamOverflow",
    ResponseFlag.NR: "NoRouteFound",
    ResponseFlag.DI: "DelayInjected",
    ResponseFlag.FI: "FaultInjected",
    ResponseFlag.RL: "RateLimited",
    ResponseFlag.UAEX: "UnauthorizedExternalService",
    ResponseFlag.RLSE: "RateLimitServiceError",
    ResponseFlag.DC: "DownstreamConnectionTermination",
    ResponseFlag.URX: "UpstreamRetryLimitExceeded",
    ResponseFlag.SI: "StreamIdleTimeout",
    ResponseFlag.IH: "InvalidEnvoyRequestHeaders",
    ResponseFlag.DPE: "DownstreamProtocolError",
    ResponseFlag.UMSDR: "UpstreamMaxStreamDurationReached",
    ResponseFlag.RFCF: "ResponseFromCacheFilter",
    ResponseFlag.NFCF: "NoFilterConfigFound",
    ResponseFlag.DT: "DurationTimeout",
    ResponseFlag.UPE: "UpstreamProtocolError",
    ResponseFlag.NC: "NoClusterFound",
    ResponseFlag.OM: "OverloadManagerTerminated",
    ResponseFlag.DF: "DnsResolutionFailed",
    ResponseFlag.DO: "DropOverload",
    ResponseFlag.DR: "DownstreamRemoteReset",
}
FLAG_SHORT_NAMES: dict[ResponseFlag, str] = {f: f.name or "" for f in FLAG_LONG_NAMES}

_ORDER = tuple(FLAG_LONG_NAMES)
_short_cache: dict[int, str] = {0: "-"}
_long_cache: dict[int, str] = {0: "-"}


def _render(bits: int, names: dict[ResponseFlag, str], cache: dict[int, str]) -> str:
    text = cache.get(bits)
    if text is None:
        text = ",".join(names[f] for f in _ORDER if bits & f)
        if len(cache) < 4096:  # a handful of combinations occur; bound it anyway
            cache[bits] = text
    return text


def render_flags(bits: int) -> str:
    """Short form, ``-`` when no flag is set."""
    return _render(bits, FLAG_SHORT_NAMES, _short_cache)


def render_flags_long(bits: int) -> str:
    return _render(bits, FLAG_LONG_NAMES, _long_cache)
