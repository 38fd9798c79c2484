"""Active health checks (issue 11, item 5) against a real nginx on a Unix socket.

nginx answers ``/hc/NAME`` with 200, or 503 while the site root has ``hc-down-NAME``
(conf/nginx-test.conf); a test switches that file, or stops nginx (its socket goes away). The
proxy runs as ``udsproxy -c FILE`` with its admin listener: each test reads /clusters' health
flags, the ``health_check.*`` stats (and their Prometheus form), and the access log.

Envoy's rules, as tested: a host is checked before the listener serves (warming); a 503 fails it
at once, ``unhealthy_threshold`` network failures in a row fail it, ``healthy_threshold`` passes
bring it back; with no healthy host and panic off (``healthy_panic_threshold: 0``) a request gets
503 UH "no healthy upstream"; with the default panic threshold a one-endpoint cluster still
sends its traffic to the failed host.
"""

from __future__ import annotations

import json
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .support import (
    AccessLog,
    NginxInstance,
    Site,
    bootstrap,
    cluster,
    get,
    listener,
    route,
    vhost,
    wait_until,
)
from .test_admin import ADMIN, Proxy, running

pytestmark = pytest.mark.integration

FLAGS_WAIT = 10.0  # generous: a check every 50 ms, on a busy machine
ONE = ("--concurrency", "1")  # one process: its checks decide for every request


class Health:
    """A name for /hc/NAME, and its switch in the site root."""

    def __init__(self, site: Site) -> None:
        self.name = f"t{secrets.token_hex(4)}"
        self.flag = site.root / f"hc-down-{self.name}"

    @property
    def path(self) -> str:
        return f"/hc/{self.name}"

    def down(self) -> None:
        self.flag.write_bytes(b"")

    def up(self) -> None:
        self.flag.unlink(missing_ok=True)


@pytest.fixture
def health(site: Site) -> Iterator[Health]:
    h = Health(site)
    yield h
    h.up()


def config(
    nginx: NginxInstance,
    health: Health,
    log: Path,
    *,
    interval: str = "0.05s",
    panic: float | None = None,
) -> dict[str, Any]:
    hugo = cluster("hugo", nginx.socket_path)
    hugo["health_checks"] = [
        {
            "timeout": "1s",
            "interval": interval,
            "no_traffic_interval": interval,
            "unhealthy_threshold": 2,
            "healthy_threshold": 2,
            "http_health_check": {"path": health.path},
        }
    ]
    if panic is not None:
        hugo["common_lb_config"] = {"healthy_panic_threshold": {"value": panic}}
    cfg = bootstrap([listener([vhost("all", [route("hugo", prefix="/")])], access_log=log)], [hugo])
    cfg["admin"] = ADMIN
    return cfg


def flags(proxy: Proxy) -> str:
    """/clusters' health_flags of the one host of cluster hugo."""
    lines = proxy.admin("/clusters")[2].decode().splitlines()
    found = [line.rsplit("::", 1)[1] for line in lines if "::health_flags::" in line]
    assert len(found) == 1, lines
    return found[0]


def hc_stats(proxy: Proxy) -> dict[str, int]:
    doc = json.loads(proxy.admin("/stats?format=json&filter=health_check")[2])
    prefix = "cluster.hugo.health_check."
    return {s["name"].removeprefix(prefix): s["value"] for s in doc["stats"] if "name" in s}


def wait_flags(proxy: Proxy, want: str) -> None:
    assert wait_until(lambda: flags(proxy) == want, FLAGS_WAIT, 0.05), flags(proxy)


def test_a_failed_check_takes_the_host_out_and_503_uh_without_panic(
    make_nginx: Callable[..., NginxInstance], health: Health, tmp_path: Path
) -> None:
    nginx = make_nginx("hc-uh")
    log = AccessLog(tmp_path / "access.log")
    with running(tmp_path, config(nginx, health, log.path, panic=0), *ONE) as proxy:
        # warmed: the first check passed before the listener was announced
        assert flags(proxy) == "healthy"
        stats = hc_stats(proxy)
        assert stats["attempt"] >= 1 and stats["success"] >= 1 and stats["healthy"] == 1
        assert get(proxy.address, "/index.html?n=1").status == 200

        health.down()  # 503: unhealthy at once, whatever unhealthy_threshold says
        wait_flags(proxy, "/failed_active_hc")
        stats = hc_stats(proxy)
        assert stats["failure"] >= 1 and stats["network_failure"] == 0
        assert stats["healthy"] == 0
        resp = get(proxy.address, "/index.html?n=2")
        assert (resp.status, resp.body) == (503, b"no healthy upstream")
        assert resp.header("content-type") == "text/plain"
        line = log.wait_for_line("/index.html?n=2")
        assert '" 503 UH 0 19 ' in line, line

        health.up()  # healthy_threshold (2) passes bring it back
        wait_flags(proxy, "healthy")
        assert get(proxy.address, "/index.html?n=3").status == 200
        assert " 200 - " in log.wait_for_line("/index.html?n=3")

        # Prometheus: Envoy's names and labels
        families = {
            f.name: f for f in text_string_to_metric_families(proxy.prometheus()) if f.samples
        }
        for name in ("attempt", "success", "failure", "network_failure", "verify_cluster"):
            sample = families[f"envoy_cluster_health_check_{name}"].samples[0]
            assert sample.labels == {"envoy_cluster_name": "hugo"}
        healthy = families["envoy_cluster_health_check_healthy"]
        assert healthy.type == "gauge" and healthy.samples[0].value == 1
    # the checks are no traffic: not in the access log, not in the cluster's request stats
    assert not log.find("/hc/")


def test_panic_keeps_a_lone_host_in_use_and_network_failures_need_the_threshold(
    make_nginx: Callable[..., NginxInstance], health: Health, tmp_path: Path
) -> None:
    nginx = make_nginx("hc-panic")
    log = AccessLog(tmp_path / "access.log")
    with running(tmp_path, config(nginx, health, log.path), *ONE) as proxy:
        assert flags(proxy) == "healthy"
        health.down()
        wait_flags(proxy, "/failed_active_hc")
        # default panic threshold (50 %): 0 of 1 healthy is panic, the host is used anyway
        assert get(proxy.address, "/index.html?n=1").status == 200
        assert " 200 - " in log.wait_for_line("/index.html?n=1")
        panic = json.loads(proxy.admin("/stats?format=json&filter=lb_healthy_panic")[2])
        assert panic["stats"][0]["value"] >= 1, panic
        health.up()
        wait_flags(proxy, "healthy")

        before = hc_stats(proxy)["network_failure"]
        nginx.stop()  # its socket goes away: connect failures, unhealthy after 2 in a row
        wait_flags(proxy, "/failed_active_hc")
        assert hc_stats(proxy)["network_failure"] - before >= 2
        resp = get(proxy.address, "/index.html?n=2")
        assert resp.status == 503  # panic: tried, and the connect failed
        assert '" 503 UF ' in log.wait_for_line("/index.html?n=2")

        nginx.start()
        wait_flags(proxy, "healthy")
        assert get(proxy.address, "/index.html?n=3").status == 200


def test_ignore_new_hosts_until_first_hc(
    make_nginx: Callable[..., NginxInstance], health: Health, tmp_path: Path
) -> None:
    """PENDING_ACTIVE_HC keeps a host out (even in panic) until its first check ends, pass or
    fail; at start warming already holds the listener until then. After a failed first check
    the lone host is used in panic."""
    nginx = make_nginx("hc-pending")
    health.down()
    cfg = config(nginx, health, tmp_path / "access.log")
    cfg["static_resources"]["clusters"][0]["common_lb_config"] = {
        "ignore_new_hosts_until_first_hc": True
    }
    with running(tmp_path, cfg, *ONE) as proxy:
        assert flags(proxy) == "/failed_active_hc"  # checked (and failed) before serving
        assert get(proxy.address, "/index.html").status == 200  # panic


def test_two_workers_check_at_half_the_rate_each(
    make_nginx: Callable[..., NginxInstance], health: Health, tmp_path: Path
) -> None:
    """--concurrency 2: each worker checks every 2 intervals, their turns interleaved, so nginx
    sees about one check per interval, as from one Envoy (counted in its access log)."""
    nginx = make_nginx("hc-workers")
    cfg = config(nginx, health, tmp_path / "access.log", interval="0.1s")
    access = nginx.prefix / "access.log"

    def checks() -> int:
        text = access.read_text(errors="replace") if access.exists() else ""
        return sum(1 for line in text.splitlines() if health.path in line and "Envoy/HC" in line)

    with running(tmp_path, cfg, "--concurrency", "2") as proxy:
        assert flags(proxy) == "healthy"
        began, before = time.monotonic(), checks()
        time.sleep(2.0)
        seen, elapsed = checks() - before, time.monotonic() - began
        assert hc_stats(proxy)["healthy"] == 1  # one worker's view, not the sum of two
    # One per interval from both together (plus a turn at each end of the window); checking at
    # the full rate each, they would send twice that. A busy machine only fires timers late:
    # fewer checks, never more.
    assert 3 <= seen <= elapsed / 0.1 + 2, (seen, elapsed)


def test_a_reload_replaces_the_checker_and_stops_the_old_one(
    make_nginx: Callable[..., NginxInstance], site: Site, tmp_path: Path
) -> None:
    """A changed cluster warms with its own checks, then replaces the old one, whose checks
    stop: no timer of the old checker outlives it (SIGHUP, the file changed)."""
    nginx = make_nginx("hc-reload")
    old, new = Health(site), Health(site)
    access = nginx.prefix / "access.log"

    def checks(h: Health) -> int:
        text = access.read_text(errors="replace") if access.exists() else ""
        return sum(1 for line in text.splitlines() if f"{h.path} " in line)

    with running(tmp_path, config(nginx, old, tmp_path / "access.log"), *ONE) as proxy:
        assert wait_until(lambda: checks(old) >= 2, FLAGS_WAIT, 0.05)
        cfg = config(nginx, new, tmp_path / "access.log")
        (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        proxy.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: checks(new) >= 3, FLAGS_WAIT, 0.05)
        stopped = checks(old)
        time.sleep(0.3)  # six intervals: the old checker would have checked again
        assert checks(old) == stopped
        assert flags(proxy) == "healthy"
        assert get(proxy.address, "/index.html").status == 200
