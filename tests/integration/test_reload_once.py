"""Reloads (issue 12): one application per content, however many times the watcher sees it (an
inotify event and the poll both fire here), content that was rejected is not tried again until
it changes, and the pooled upstream connections of clusters that did not change stay open
across LDS, CDS and SIGHUP-style reloads (nginx counts no new connection)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import uvloop
import yaml

from tests.integration.support import NginxInstance, cluster, listener, route, vhost
from udsproxy.server import Server
from udsproxy.watch import ConfigWatcher, watch_targets

_LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
_CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def _lds(version: str, *extra_routes: dict[str, Any]) -> str:
    routes = [*extra_routes, route("nginx", prefix="/")]
    resource = listener([vhost("all", routes)], name="ingress")
    return yaml.safe_dump(
        {"version_info": version, "resources": [{"@type": _LISTENER_TYPE, **resource}]}
    )


def _cds(version: str, sock: str, other_timeout: str) -> str:
    resources = [cluster("nginx", sock), cluster("other", sock, connect_timeout=other_timeout)]
    return yaml.safe_dump(
        {"version_info": version, "resources": [{"@type": _CLUSTER_TYPE, **c} for c in resources]}
    )


def _replace(path: Path, text: str) -> None:
    """What a config management tool does: write beside, then rename over."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def _get(server: Server, path: str) -> int:
    reader, writer = await asyncio.open_connection(*server.address())
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
        return int(data.split(b" ", 2)[1])
    finally:
        writer.close()


async def _until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _scenario(tmp: Path, nginx: NginxInstance) -> None:
    sock = nginx.socket_path
    lds, cds = tmp / "lds.yaml", tmp / "cds.yaml"
    lds.write_text(_lds("1"))
    cds.write_text(_cds("1", sock, "1s"))
    boot = tmp / "bootstrap.yaml"
    boot.write_text(
        yaml.safe_dump(
            {
                "dynamic_resources": {
                    "lds_config": {"path_config_source": {"path": str(lds)}},
                    "cds_config": {"path_config_source": {"path": str(cds)}},
                }
            }
        )
    )
    server = await Server.start(str(boot))
    watcher = ConfigWatcher(
        lambda: watch_targets(server.bootstrap),
        lambda why: server.reload(why, if_changed=True),
        poll_interval=0.05,  # the poll sees every change the watcher saw: both try it
    )
    watcher.start()
    nginx_cluster = server.clusters["nginx"]

    def counter(name: str) -> int:
        return server.raw_stats()[0].get(name, 0)

    def opened() -> int:
        return counter("cluster.nginx.upstream_cx_total")

    try:
        assert await _get(server, "/index.html") == 200
        assert opened() == 1
        lds_attempts = counter("listener_manager.lds.update_attempt")

        # 1. LDS: a new route, by rename. Applied once; the nginx pool stays.
        direct = {"match": {"path": "/new"}, "direct_response": {"status": 204}}
        _replace(lds, _lds("2", direct))

        async def new_route() -> bool:
            return await _get(server, "/new") == 204

        assert await _until(new_route)
        await asyncio.sleep(0.6)  # the debounce (0.25 s) and many polls pass
        assert counter("listener_manager.lds.update_attempt") == lds_attempts + 1
        assert counter("listener_manager.lds.update_success") == lds_attempts + 1
        assert await _get(server, "/index.html") == 200
        assert server.clusters["nginx"] is nginx_cluster
        assert opened() == 1  # the pooled connection served it: no new one

        # 2. CDS: only cluster "other" changes. "nginx" is the same object, its pool open.
        cds_attempts = counter("cluster_manager.cds.update_attempt")
        _replace(cds, _cds("2", sock, "2s"))

        async def cds_applied() -> bool:
            return counter("cluster_manager.cds.update_attempt") == cds_attempts + 1

        assert await _until(cds_applied)
        await asyncio.sleep(0.6)
        assert counter("cluster_manager.cds.update_attempt") == cds_attempts + 1
        assert counter("cluster_manager.cluster_modified") == 1
        assert server.clusters["nginx"] is nginx_cluster
        assert await _get(server, "/index.html") == 200
        assert opened() == 1

        # 3. SIGHUP re-reads unchanged files: applied (counted), nothing replaced.
        assert await server.reload("SIGHUP")
        assert counter("cluster_manager.cds.update_attempt") == cds_attempts + 2
        assert server.clusters["nginx"] is nginx_cluster
        assert await _get(server, "/index.html") == 200
        assert opened() == 1

        # 4. Rejected content is tried once, not again at every poll.
        rejected = counter("listener_manager.lds.update_rejected")
        _replace(lds, "version_info: '3'\nresources: [{'@type': " + repr(_LISTENER_TYPE) + "}]\n")

        async def was_rejected() -> bool:
            return counter("listener_manager.lds.update_rejected") == rejected + 1

        assert await _until(was_rejected)
        await asyncio.sleep(0.6)
        assert counter("listener_manager.lds.update_rejected") == rejected + 1
        assert await _get(server, "/new") == 204  # the running config stays
        assert opened() == 1
    finally:
        await watcher.stop()
        await server.stop()


def test_reload_once_per_content_and_pools_kept(
    tmp_path: Path, nginx: NginxInstance, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="udsproxy.server")
    uvloop.run(_scenario(tmp_path, nginx))
    applied = [r.getMessage() for r in caplog.records if " applied (" in r.getMessage()]
    # the LDS rename, the CDS rename and the SIGHUP: three applications, no more
    assert len(applied) == 3, applied
    assert [r for r in caplog.records if "rejected" in r.getMessage()], caplog.records
