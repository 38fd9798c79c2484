"""envoy.filters.http.local_ratelimit through the real proxy in front of real nginx: the 429 (body,
x-envoy-ratelimited, response_headers_to_add), flag RL in the access log, the stats in /stats and
/stats/prometheus, per-route and per-virtual-host buckets, filter_enabled/filter_enforced at 0%,
and two workers each taking their share of the bucket.

The buckets refill one token an hour, so what a test sees does not depend on timing."""

from __future__ import annotations

import http.client
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import (
    AccessLog,
    NginxInstance,
    ProxyProcess,
    Site,
    bootstrap,
    cluster,
    listener,
    route,
    vhost,
    wait_until,
)

pytestmark = pytest.mark.integration

T = "type.googleapis.com/"
LRL = "envoy.filters.http.local_ratelimit"
LRL_TYPE = T + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
}
HOUR = "3600s"  # one token an hour: no refill while a test runs
ON = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
_ADMIN = re.compile(r"udsproxy: admin listening on 127\.0\.0\.1:(\d+)")


def limit(stat_prefix: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    """A LocalRateLimit: ``max_tokens`` tokens, refilled one an hour."""
    bucket = {"max_tokens": max_tokens, "tokens_per_fill": 1, "fill_interval": HOUR}
    return {"@type": LRL_TYPE, "stat_prefix": stat_prefix, "token_bucket": bucket, **extra}


def per_route(r: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    r["typed_per_filter_config"] = {LRL: config}
    return r


def make_config(nginx: NginxInstance, log: Path, listener_limit: dict[str, Any]) -> dict[str, Any]:
    fmt = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %REQ(USER-AGENT)%\n"
    enforced = {"filter_enabled": ON, "filter_enforced": ON}
    routes = [
        # a route's own bucket, status and headers
        per_route(
            route("nginx", prefix="/lrl/route/"),
            limit(
                "route_limiter",
                1,
                status={"code": "ServiceUnavailable"},
                response_headers_to_add=[
                    {
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        "header": {"key": "x-limited-path", "value": "%REQ(:PATH)%"},
                    }
                ],
                **enforced,
            ),
        ),
        # enabled, not enforced (filter_enforced omitted: 0%): counted, never refused
        per_route(
            route("nginx", prefix="/lrl/shadow/"), limit("shadow_limiter", 1, filter_enabled=ON)
        ),
        # neither fraction: the bucket is never consulted
        per_route(route("nginx", prefix="/lrl/off/"), limit("off_limiter", 1)),
        route("nginx", prefix="/"),
    ]
    # a virtual host's config: its routes share one bucket
    shared = vhost(
        "shared",
        [route("nginx", prefix="/lrl/a/"), route("nginx", prefix="/lrl/b/")],
        domains=["shared.test"],
    )
    shared["typed_per_filter_config"] = {LRL: limit("vhost_limiter", 2, **enforced)}
    http_filters = [{"name": LRL, "typed_config": listener_limit}, ROUTER]
    lst = listener([shared, vhost("main", routes)], name="lrl", http_filters=http_filters)
    lst["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": T + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(log),
                "log_format": {"text_format_source": {"inline_string": fmt}},
            },
        }
    ]
    config = bootstrap([lst], [cluster("nginx", nginx.socket_path)])
    config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    return config


LISTENER_LIMIT = limit(
    "listener_limiter",
    2,
    filter_enabled={"runtime_key": "lrl_enabled", **ON},
    filter_enforced={"runtime_key": "lrl_enforced", **ON},
    response_headers_to_add=[
        {"header": {"key": "x-local-rate-limit", "value": "true"}},
        {"header": {"key": "x-limited-path", "value": "%REQ(:PATH)%"}},  # a format command
    ],
)


@pytest.fixture(scope="module")
def limited(
    nginx: NginxInstance, site: Site, tmp_path_factory: Any
) -> Iterator[tuple[ProxyProcess, AccessLog]]:
    site.add("/lrl/route/x.txt", b"x\n")
    workdir: Path = tmp_path_factory.mktemp("lrl")
    log = workdir / "access.log"
    proc = ProxyProcess(make_config(nginx, log, LISTENER_LIMIT), workdir).start()
    yield proc, AccessLog(log)
    assert proc.stop() == 0, proc.stderr()


def get(
    proc: ProxyProcess, path: str, ua: str = "lrl", host: str = "main.test"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
    try:
        conn.request("GET", path, headers={"User-Agent": ua, "Host": host, "Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def admin(proc: ProxyProcess, path: str) -> str:
    assert wait_until(lambda: _ADMIN.search(proc.stderr()) is not None, 10), proc.stderr()
    m = _ADMIN.search(proc.stderr())
    assert m is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}{path}", timeout=5) as resp:
        text: str = resp.read().decode()
    return text


def stats(proc: ProxyProcess, prefix: str) -> dict[str, int]:
    out = {}
    for line in admin(proc, "/stats").splitlines():
        name, _, value = line.partition(": ")
        if name.startswith(f"{prefix}.http_local_rate_limit."):
            out[name.rsplit(".", 1)[1]] = int(value)
    return out


def test_listener_bucket_answers_429_with_envoys_reply(
    limited: tuple[ProxyProcess, AccessLog],
) -> None:
    proc, log = limited
    assert [get(proc, "/index.html")[0] for _ in range(2)] == [200, 200]
    status, headers, body = get(proc, "/index.html", ua="lrl/listener-429")
    assert (status, body) == (429, b"local_rate_limited")
    assert headers["content-length"] == "18"
    assert headers["content-type"] == "text/plain"
    assert headers["x-envoy-ratelimited"] == "true"
    assert headers["x-local-rate-limit"] == "true"
    assert headers["x-limited-path"] == "/index.html"
    line = log.wait_for_line("lrl/listener-429")
    assert line == "429 RL local_rate_limited lrl/listener-429"
    assert stats(proc, "listener_limiter") == {
        "enabled": 3, "enforced": 1, "ok": 2, "rate_limited": 1,
    }  # fmt: skip
    prom = admin(proc, "/stats/prometheus")
    label = '{envoy_local_http_ratelimit_prefix="listener_limiter"}'
    assert f"envoy_http_local_rate_limit_rate_limited{label} 1" in prom
    assert f"envoy_http_local_rate_limit_ok{label} 2" in prom
    assert "# TYPE envoy_http_local_rate_limit_enforced counter" in prom


def test_route_config_has_its_own_bucket_status_and_headers(
    limited: tuple[ProxyProcess, AccessLog],
) -> None:
    proc, log = limited
    assert get(proc, "/lrl/route/x.txt")[0] == 200
    status, headers, body = get(proc, "/lrl/route/x.txt?again", ua="lrl/route-503")
    assert (status, body) == (503, b"local_rate_limited")
    assert headers["x-envoy-ratelimited"] == "true"
    assert headers["x-limited-path"] == "/lrl/route/x.txt?again"
    assert "x-local-rate-limit" not in headers  # the route's config replaces the listener's
    assert log.wait_for_line("lrl/route-503") == "503 RL local_rate_limited lrl/route-503"
    assert stats(proc, "route_limiter") == {"enabled": 2, "enforced": 1, "ok": 1, "rate_limited": 1}


def test_virtual_host_config_is_one_bucket_for_its_routes(
    limited: tuple[ProxyProcess, AccessLog],
) -> None:
    proc, _ = limited
    statuses = [get(proc, p, host="shared.test")[0] for p in ("/lrl/a/", "/lrl/b/", "/lrl/a/")]
    assert statuses[2] == 429  # two tokens between both routes (nginx answers 404 to the rest)
    assert stats(proc, "vhost_limiter")["ok"] == 2


def test_enabled_but_not_enforced_counts_only(limited: tuple[ProxyProcess, AccessLog]) -> None:
    proc, log = limited
    for n in range(3):
        status, headers, _ = get(proc, f"/lrl/shadow/{n}", ua=f"lrl/shadow-{n}")
        assert status == 404 and "x-envoy-ratelimited" not in headers  # nginx's answer
    assert log.wait_for_line("lrl/shadow-2").startswith("404 - via_upstream")
    assert stats(proc, "shadow_limiter") == {
        "enabled": 3,
        "enforced": 0,
        "ok": 1,
        "rate_limited": 2,
    }


def test_zero_percent_never_consults_the_bucket(limited: tuple[ProxyProcess, AccessLog]) -> None:
    proc, _ = limited
    assert [get(proc, "/lrl/off/")[0] for _ in range(3)] == [404] * 3
    assert stats(proc, "off_limiter") == {"enabled": 0, "enforced": 0, "ok": 0, "rate_limited": 0}


def test_two_workers_each_take_half_the_bucket(nginx: NginxInstance, tmp_path: Path) -> None:
    """max_tokens 4 with --concurrency 2: two tokens a worker. New connections spread over both
    workers, so the first four requests that reach a worker with a token get through, no more."""
    log = tmp_path / "access.log"
    config = make_config(nginx, log, limit("two_workers", 4, filter_enabled=ON, filter_enforced=ON))
    proc = ProxyProcess(config, tmp_path, "--concurrency", "2").start()
    try:
        statuses: list[int] = []
        while statuses.count(200) < 4 and len(statuses) < 200:
            statuses.append(get(proc, "/index.html")[0])
        statuses += [get(proc, "/index.html")[0] for _ in range(20)]  # nothing more gets through
        n = len(statuses)
        assert statuses.count(200) == 4 and statuses.count(429) == n - 4, statuses
        assert stats(proc, "two_workers") == {
            "enabled": n, "enforced": n - 4, "ok": 4, "rate_limited": n - 4,
        }  # fmt: skip
    finally:
        assert proc.stop() == 0, proc.stderr()
