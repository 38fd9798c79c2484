"""An abstract-namespace upstream ('@name'): uvloop cannot connect to those by path, so the
proxy connects the socket itself and hands it over."""

from __future__ import annotations

import asyncio
import os

import uvloop

from udsproxy.server import Server


def _config(name: str) -> dict[str, object]:
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "l0",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters."
                                        "network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "t",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {"cluster": "abs"},
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "abs",
                    "load_assignment": {
                        "cluster_name": "abs",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": {"pipe": {"path": "@" + name}}}}
                                ]
                            }
                        ],
                    },
                }
            ],
        }
    }


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        body = b"abstract:" + head.split(b" ", 2)[1]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        if reader.at_eof():
            break


async def _scenario() -> list[bytes]:
    name = f"udsproxy-test-{os.getpid()}-{os.urandom(4).hex()}"
    upstream = await asyncio.start_unix_server(_upstream, path="\0" + name)
    server = await Server.start(_config(name))
    try:
        host, port = server.address()
        reader, writer = await asyncio.open_connection(host, port)
        bodies = []
        for path in (b"/one", b"/two"):  # the second reuses the pooled abstract connection
            writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            bodies.append(await reader.readexactly(length))
        writer.close()
        return bodies
    finally:
        await server.stop()
        upstream.close()


def test_abstract_socket_upstream() -> None:
    assert uvloop.run(_scenario()) == [b"abstract:/one", b"abstract:/two"]


async def _tcp_scenario() -> tuple[bytes, bytes]:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntcp")
        await writer.drain()
        writer.close()

    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = up.sockets[0].getsockname()[1]
    cfg = _config("unused")
    clusters = cfg["static_resources"]["clusters"]  # type: ignore[index]
    endpoint = clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    server = await Server.start(cfg)
    try:
        host, lport = server.address()
        out = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection(host, lport)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            out.append(await asyncio.wait_for(reader.read(), 5))
            writer.close()
        return out[0], out[1]
    finally:
        await server.stop()
        up.close()


def test_tcp_upstream_endpoint() -> None:
    first, second = uvloop.run(_tcp_scenario())
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"tcp")
    assert second.startswith(b"HTTP/1.1 200 OK\r\n")
