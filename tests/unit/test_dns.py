"""udsproxy.dns: family selection, backoff and the resolver loop, with a fake lookup."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

import pytest

from udsproxy.config.schema import Cluster as ClusterConfig
from udsproxy.config.schema import Endpoint, SocketAddress
from udsproxy.dns import Backoff, Resolver, select
from udsproxy.stats.store import ClusterStats
from udsproxy.upstream.cluster import Cluster

ANSWER = ["10.0.0.1", "2001:db8::1", "10.0.0.2", "10.0.0.1", "fe80::1%eth0"]


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("AUTO", ("2001:db8::1", "fe80::1")),
        ("V4_PREFERRED", ("10.0.0.1", "10.0.0.2")),
        ("V4_ONLY", ("10.0.0.1", "10.0.0.2")),
        ("V6_ONLY", ("2001:db8::1", "fe80::1")),
        ("ALL", ("10.0.0.1", "2001:db8::1", "10.0.0.2", "fe80::1")),
    ],
)
def test_select(family: str, expected: tuple[str, ...]) -> None:
    assert select(ANSWER, family) == expected


def test_select_falls_back_to_the_other_family() -> None:
    assert select(["10.0.0.1"], "AUTO") == ("10.0.0.1",)
    assert select(["::1"], "V4_PREFERRED") == ("::1",)
    assert select(["::1"], "V4_ONLY") == ()


def test_backoff_is_jittered_exponential_and_resets() -> None:
    top = Backoff(1.0, 8.0, rand=lambda: 1.0)
    assert [top.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    top.reset()
    assert top.next() == 1.0
    bottom = Backoff(1.0, 8.0, rand=lambda: 0.0)
    assert [bottom.next() for _ in range(3)] == [1.0, 1.0, 1.0]
    fixed = Backoff(5.0, 5.0)
    assert [fixed.next() for _ in range(3)] == [5.0, 5.0, 5.0]


class FakeDns:
    """Answers from a dict; a missing name raises gaierror like getaddrinfo."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def lookup(self, name: str) -> Sequence[str]:
        self.asked.append(name)
        await asyncio.sleep(0)
        if name not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[name]


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_resolver_counts_refreshes_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        dns = FakeDns({"a": ["10.0.0.1"]})
        stats = ClusterStats()
        seen: list[tuple[int, tuple[str, ...]]] = []

        def on_resolved(i: int, addresses: tuple[str, ...]) -> bool:
            changed = not seen or seen[-1] != (i, addresses)
            seen.append((i, addresses))
            return changed

        resolver = Resolver(
            loop, "c", ["a", "nope"], on_resolved, stats,
            refresh_rate=0.01, failure_refresh_rate=(0.02, 0.05), lookup=dns.lookup,
        )  # fmt: skip
        resolver.start()
        assert await resolver.wait_initial(1.0)
        assert seen == [(0, ("10.0.0.1",))]
        assert (stats.update_attempt, stats.update_success, stats.update_failure) == (2, 1, 1)
        await asyncio.sleep(0.1)
        assert stats.update_success >= 3  # refreshed every 10 ms
        assert stats.update_no_rebuild == stats.update_success - 1
        assert 2 <= stats.update_failure < stats.update_success  # backing off
        dns.answers["nope"] = ["10.0.0.9"]
        await asyncio.sleep(0.1)
        assert (1, ("10.0.0.9",)) in seen
        resolver.close()
        assert not resolver.active
        attempts = stats.update_attempt
        await asyncio.sleep(0.05)
        assert stats.update_attempt == attempts  # nothing after close

    with caplog.at_level(logging.DEBUG, logger="udsproxy.dns"):
        run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # logged once, not at every retry
    assert warnings[0].startswith("cluster 'c': DNS resolution of 'nope' failed:")
    assert any("'nope' resolves again" in r.getMessage() for r in caplog.records)


def test_wait_initial_is_bounded() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        never: asyncio.Future[Sequence[str]] = loop.create_future()

        async def hang(name: str) -> Sequence[str]:
            return await never

        stats = ClusterStats()
        resolver = Resolver(loop, "c", ["slow"], lambda i, a: True, stats, lookup=hang)
        resolver.start()
        assert not await resolver.wait_initial(0.01)
        resolver.close()
        await asyncio.sleep(0)
        assert not resolver.active

    run(main())


def config(kind: str, *names: str, weights: Sequence[int] = ()) -> ClusterConfig:
    endpoints = tuple(
        Endpoint(
            address=SocketAddress(address=n, port_value=80),
            load_balancing_weight=weights[i] if weights else 1,
        )
        for i, n in enumerate(names)
    )
    return ClusterConfig(name="c", endpoints=endpoints, type=kind)


def test_strict_dns_hosts_follow_the_answers() -> None:
    async def main() -> None:
        cluster = Cluster(
            config("STRICT_DNS", "web", "api", weights=(1, 2)), asyncio.get_running_loop()
        )
        assert cluster.pick() is None  # nothing resolved yet: 503 UH
        assert cluster._on_resolved(0, ("10.0.0.1", "10.0.0.2"))
        first = cluster.hosts
        assert [h.text for h in first] == ["10.0.0.1:80", "10.0.0.2:80"]
        assert {h.hostname for h in first} == {"web"}
        assert not cluster._on_resolved(0, ("10.0.0.1", "10.0.0.2"))
        assert not cluster._on_resolved(0, ("10.0.0.2", "10.0.0.1"))  # rotated: no rebuild
        assert cluster._on_resolved(1, ("10.0.1.1",))
        picks = [cluster.pick() for _ in range(8)]
        assert [p.text for p in picks if p is not None].count("10.0.1.1:80") == 4  # weight 2
        assert cluster._on_resolved(0, ("10.0.0.2", "10.0.0.3"))
        kept = [h for h in cluster.hosts if h.text == "10.0.0.2:80"]
        assert kept == [first[1]]  # same host object: its pool stays
        assert first[0].retired and not first[1].retired
        assert [h.text for h in cluster.hosts] == ["10.0.0.2:80", "10.0.0.3:80", "10.0.1.1:80"]
        cluster.close()

    run(main())


def test_logical_dns_moves_its_one_host() -> None:
    async def main() -> None:
        cluster = Cluster(config("LOGICAL_DNS", "web"), asyncio.get_running_loop())
        assert cluster._on_resolved(0, ("10.0.0.1", "10.0.0.2"))
        (host,) = cluster.hosts
        assert host.text == "10.0.0.1:80"
        assert host.auto_host() == b"web"
        assert not cluster._on_resolved(0, ("10.0.0.1",))
        assert not cluster._on_resolved(0, ())  # an empty answer keeps the host
        assert cluster._on_resolved(0, ("10.0.0.5",))
        assert cluster.hosts == (host,) and host.text == "10.0.0.5:80"
        assert cluster.pick() is host
        cluster.close()

    run(main())


def test_static_hosts_get_weights_and_hostname() -> None:
    async def main() -> None:
        endpoints = (
            Endpoint(address=SocketAddress(address="10.0.0.1", port_value=80), hostname="a.test"),
            Endpoint(
                address=SocketAddress(address="10.0.0.2", port_value=80), load_balancing_weight=3
            ),
        )
        cluster = Cluster(ClusterConfig(name="c", endpoints=endpoints), asyncio.get_running_loop())
        assert cluster.resolver is None
        assert [h.auto_host() for h in cluster.hosts] == [b"a.test", None]
        picks = [h.text for h in (cluster.pick() for _ in range(8)) if h is not None]
        assert picks.count("10.0.0.2:80") == 6

    run(main())
