"""Outlier detection's state machine (udsproxy.upstream.outlier), with a fake clock: no sockets,
no event loop."""

from __future__ import annotations

from dataclasses import replace

from udsproxy.config.schema import OutlierDetection
from udsproxy.stats.store import OutlierStats
from udsproxy.upstream.health import FAILED_OUTLIER_CHECK
from udsproxy.upstream.outlier import (
    LOCAL_ORIGIN_CONNECT_FAILED,
    LOCAL_ORIGIN_CONNECT_SUCCESS,
    Detector,
    HostMonitor,
)


class FakeHost:
    def __init__(self) -> None:
        self.health_flags = 0


class FakeCluster:
    def __init__(self) -> None:
        self.changes = 0

    def health_changed(self) -> None:
        self.changes += 1


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


ONE_HOST_EJECTS = OutlierDetection(max_ejection_percent=100, interval=1.0, base_ejection_time=10.0)


def setup(
    config: OutlierDetection = ONE_HOST_EJECTS, n: int = 1, rand: float = 0.0
) -> tuple[Detector, list[HostMonitor], FakeCluster, Clock]:
    cluster, clock = FakeCluster(), Clock()
    detector = Detector(config, cluster, None, OutlierStats(), clock=clock, rand=lambda: rand)
    monitors = [detector.monitor(FakeHost()) for _ in range(n)]
    detector.hosts_changed(monitors)
    return detector, monitors, cluster, clock


def ejected(m: HostMonitor) -> bool:
    return bool(m.host.health_flags & FAILED_OUTLIER_CHECK)


def test_five_consecutive_5xx_eject() -> None:
    d, (m,), cluster, _ = setup()
    for _ in range(4):
        m.put_http_response_code(500)
    assert not ejected(m)
    m.put_http_response_code(500)
    assert ejected(m) and cluster.changes == 1
    s = d.stats
    assert (s.ejections_active, s.ejections_enforced_total) == (1, 1)
    assert (s.ejections_detected_consecutive_5xx, s.ejections_enforced_consecutive_5xx) == (1, 1)
    assert (s.ejections_total, s.ejections_consecutive_5xx) == (1, 1)  # the deprecated ones


def test_a_success_breaks_the_run() -> None:
    _, (m,), _, _ = setup()
    for code in (500, 500, 500, 500, 200, 500, 500, 500, 500):
        m.put_http_response_code(code)
    assert not ejected(m)


def test_gateway_failures_are_detected_but_not_enforced_by_default() -> None:
    config = replace(ONE_HOST_EJECTS, consecutive_5xx=100)
    d, (m,), _, _ = setup(config)
    for _ in range(5):
        m.put_http_response_code(503)
    assert not ejected(m)  # enforcing_consecutive_gateway_failure: 0
    assert d.stats.ejections_detected_consecutive_gateway_failure == 1
    assert d.stats.ejections_enforced_consecutive_gateway_failure == 0
    assert d.stats.ejections_total == 0  # deprecated: counts consecutive 5xx only
    enforced = replace(config, enforcing_consecutive_gateway_failure=100)
    d, (m,), _, _ = setup(enforced)
    for code in (502, 504, 503, 502, 500):  # a 500 is not a gateway failure
        m.put_http_response_code(code)
    assert not ejected(m)
    for _ in range(5):
        m.put_http_response_code(502)
    assert ejected(m) and d.stats.ejections_enforced_consecutive_gateway_failure == 1


def test_local_origin_counts_as_503_without_split() -> None:
    d, (m,), _, _ = setup()
    for _ in range(5):
        m.put_connect_failure()
    assert ejected(m) and d.stats.ejections_enforced_consecutive_5xx == 1
    assert d.stats.ejections_detected_consecutive_gateway_failure == 1


def test_split_mode_counts_local_origin_apart() -> None:
    config = replace(ONE_HOST_EJECTS, split_external_local_origin_errors=True)
    d, (m,), _, _ = setup(config)
    for _ in range(4):
        m.put_connect_failure()
    m.put_http_response_code(500)  # external: its own count
    assert m.consecutive_local_origin_failure == 4 and m.consecutive_5xx == 1
    m.put_connect_failure()
    assert ejected(m)
    assert d.stats.ejections_enforced_consecutive_local_origin_failure == 1
    assert d.stats.ejections_detected_consecutive_5xx == 0


def test_split_mode_a_made_connection_resets_the_local_count() -> None:
    config = replace(ONE_HOST_EJECTS, split_external_local_origin_errors=True)
    _, (m,), _, _ = setup(config)
    for _ in range(10):
        m.put_reset()  # Envoy: the pool's connection (success), then the reset
    assert not ejected(m) and m.consecutive_local_origin_failure == 1
    m.put_result(LOCAL_ORIGIN_CONNECT_FAILED)
    m.put_result(LOCAL_ORIGIN_CONNECT_SUCCESS)
    assert m.consecutive_local_origin_failure == 0


def test_timeout_counts_as_504() -> None:
    _, (m,), _, _ = setup()
    for _ in range(5):
        m.put_timeout(connected=True)
    assert ejected(m)


def test_uneject_after_base_time_then_back_off_grows_and_decays() -> None:
    d, (m,), cluster, clock = setup()
    for _ in range(5):
        m.put_http_response_code(500)
    clock.now = 9.0
    assert d.sweep() and ejected(m)
    clock.now = 10.0
    d.sweep()
    assert not ejected(m) and d.stats.ejections_active == 0 and cluster.changes == 2
    assert m.consecutive_5xx == 0
    for _ in range(5):  # at once again: twice the base time
        m.put_http_response_code(500)
    assert m.backoff == 2 and d.ejection_time(m) == 20.0
    clock.now = 29.0
    d.sweep()
    assert ejected(m)
    clock.now = 30.0
    d.sweep()
    assert not ejected(m)
    clock.now = 31.0  # healthy for an interval: the back-off goes down one
    assert d.sweep()
    assert m.backoff == 1
    clock.now = 32.0
    assert not d.sweep()  # nothing left to do: the timer stops
    assert m.backoff == 0


def test_max_ejection_time_caps_the_back_off() -> None:
    config = replace(ONE_HOST_EJECTS, base_ejection_time=10.0, max_ejection_time=25.0)
    d, (m,), _, clock = setup(config)
    for _i in range(6):
        for _ in range(5):
            m.put_http_response_code(500)
        assert ejected(m)
        clock.now += d.ejection_time(m)
        d.sweep()
    assert d.ejection_time(m) == 25.0 and m.num_ejections == 6


def test_max_ejection_percent_counts_this_ejection() -> None:
    d, (m,), _, _ = setup(OutlierDetection())  # 10 %: one host is 100 %
    for _ in range(5):
        m.put_http_response_code(500)
    assert not ejected(m) and d.stats.ejections_overflow == 1
    assert d.stats.ejections_detected_consecutive_5xx == 1
    d, (m,), _, _ = setup(OutlierDetection(always_eject_one_host=True))
    for _ in range(5):
        m.put_http_response_code(500)
    assert ejected(m)
    d, ms, _, _ = setup(OutlierDetection(max_ejection_percent=50), n=4)
    for m in ms:
        for _ in range(5):
            m.put_http_response_code(500)
    assert [ejected(m) for m in ms] == [True, True, False, False]
    assert d.stats.ejections_overflow == 2


def test_enforcing_percent_rolls_the_dice() -> None:
    config = replace(ONE_HOST_EJECTS, enforcing_consecutive_5xx=30)
    d, (m,), _, _ = setup(config, rand=0.5)  # 50 >= 30: detected, not enforced
    for _ in range(5):
        m.put_http_response_code(500)
    assert not ejected(m) and d.stats.ejections_detected_consecutive_5xx == 1
    d, (m,), _, _ = setup(config, rand=0.1)
    for _ in range(5):
        m.put_http_response_code(500)
    assert ejected(m)


def test_an_ejected_host_keeps_counting_but_is_not_ejected_twice() -> None:
    d, (m,), _, _ = setup()
    for _ in range(12):  # panic sends it traffic still
        m.put_http_response_code(500)
    assert d.stats.ejections_detected_consecutive_5xx == 1


def test_a_passing_health_check_unejects() -> None:
    d, (m,), _, _ = setup()
    for _ in range(5):
        m.put_http_response_code(500)
    d.uneject_by_health_check(m)
    assert not ejected(m) and d.stats.ejections_active == 0


def test_closed_detector_ejects_nothing() -> None:
    d, (m,), _, _ = setup()
    d.close()
    for _ in range(5):
        m.put_http_response_code(500)
    assert not ejected(m)


def test_the_sweep_timer_runs_while_needed_and_stops_with_the_cluster() -> None:
    import asyncio

    from udsproxy.config.schema import Cluster as ClusterConfig
    from udsproxy.config.schema import Endpoint, Pipe
    from udsproxy.upstream.cluster import Cluster

    loop = asyncio.new_event_loop()
    try:
        endpoints = (Endpoint(address=Pipe(path="/tmp/o0.sock")),)
        config = ClusterConfig(name="c", endpoints=endpoints, outlier_detection=ONE_HOST_EJECTS)
        c = Cluster(config, loop)
        detector, host = c.outlier, c.hosts[0]
        assert detector is not None and host.outlier is not None
        assert detector._timer is None  # nothing ejected: no timer
        for _ in range(5):
            host.outlier.put_http_response_code(503)
        assert host.health_flags & FAILED_OUTLIER_CHECK and detector._timer is not None
        assert c.stats.outlier is not None and c.stats.outlier.ejections_active == 1
        c.drain()  # a reload replaced the cluster
        assert detector._timer is None and detector.closed
        replacement = Cluster(config, loop, c.stats)
        assert c.stats.outlier.ejections_active == 0  # the new hosts start healthy
        assert replacement.outlier is not detector
    finally:
        loop.close()


def test_no_outlier_detection_no_monitor() -> None:
    import asyncio

    from udsproxy.config.schema import Cluster as ClusterConfig
    from udsproxy.config.schema import Endpoint, Pipe
    from udsproxy.upstream.cluster import Cluster

    loop = asyncio.new_event_loop()
    try:
        endpoints = (Endpoint(address=Pipe(path="/tmp/o0.sock")),)
        c = Cluster(ClusterConfig(name="c", endpoints=endpoints), loop)
        assert c.outlier is None and c.hosts[0].outlier is None and c.stats.outlier is None
    finally:
        loop.close()
