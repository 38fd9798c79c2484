"""Request latency and event-loop blocking while reloads happen under load (issue 12).

    .venv/bin/python -m benchmarks.reload_latency [--reloads 10] [--rate 200] [--routes 300]

udsproxy runs in this process (the embedding API, uvloop) in front of nginx on a Unix socket,
with a bootstrap of ``--routes`` routes and a CDS file of 50 clusters. A client process sends a
steady stream of GETs (``--rate`` per second over 4 keep-alive connections; each latency is
measured from the request's scheduled time, so a stall also counts for the requests it delays).
Meanwhile the bootstrap's first route is edited and ``Server.reload()`` runs ``--reloads`` times,
one every 0.5 s. A 1 ms timer on the proxy's loop records how late it fires (the loop's longest
blocking), both over the whole run and within each reload. Printed: requests, errors, p50, p99 and
max latency, the loop's worst lag, how long each reload took, and how many upstream connections
were opened (0 expected: the clusters did not change, so their pools stay).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
import yaml

from tests.integration.support import NginxInstance, find_nginx, index_html

_CLIENT = r"""
import json, socket, sys, time
host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
conns = [socket.create_connection((host, port)) for _ in range(4)]
req = b"GET /index.html HTTP/1.1\r\nhost: bench\r\n\r\n"
lat, errors = [], 0
start = time.monotonic()
n = 0
while True:
    due = start + n / rate
    if due - start > seconds:
        break
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    s = conns[n % 4]
    try:
        s.sendall(req)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("closed")
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
        if not data.startswith(b"HTTP/1.1 200"):
            errors += 1
        if b"\r\nconnection: close" in head.lower():  # a replaced listener config: drained
            s.close()
            conns[n % 4] = socket.create_connection((host, port))
    except OSError:
        errors += 1
        conns[n % 4] = socket.create_connection((host, port))
    lat.append(time.monotonic() - due)
    n += 1
print(json.dumps({"lat": lat, "errors": errors}))
"""


def _config(sock: str, routes: int, cds: Path, generation: int) -> dict[str, Any]:
    route_list: list[dict[str, Any]] = [
        {"match": {"prefix": f"/gen{generation}/"}, "route": {"cluster": "c0"}}
    ]
    route_list += [
        {"match": {"path": f"/r{i}"}, "route": {"cluster": f"c{i % 50}"}} for i in range(routes)
    ]
    route_list.append({"match": {"prefix": "/"}, "route": {"cluster": "nginx"}})
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager."
        "v3.HttpConnectionManager",
        "stat_prefix": "ingress_http",
        "route_config": {
            "name": "local_route",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": route_list}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [_cluster("nginx", sock)],
        },
        "dynamic_resources": {"cds_config": {"path_config_source": {"path": str(cds)}}},
    }


def _cluster(name: str, sock: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": sock}}}}]}],
        },
    }


def _cds(sock: str) -> dict[str, Any]:
    resources = []
    for i in range(50):
        c = _cluster(f"c{i}", sock)
        c["@type"] = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
        resources.append(c)
    return {"version_info": "1", "resources": resources}


async def _run(args: argparse.Namespace, work: Path, sock: str) -> dict[str, Any]:
    import udsproxy.server
    from udsproxy.server import Server

    if args.in_thread:
        load = udsproxy.server.load_isolated
        udsproxy.server.load_isolated = lambda source, child=False: load(source)  # type: ignore[assignment]
    cds = work / "cds.yaml"
    cds.write_text(yaml.safe_dump(_cds(sock)))
    boot = work / "proxy.yaml"
    boot.write_text(yaml.safe_dump(_config(sock, args.routes, cds, 0)))
    server = await Server.start(str(boot))
    # rendered now: the YAML dumper is slow Python that would block the loop being measured
    texts = [yaml.safe_dump(_config(sock, args.routes, cds, g)) for g in range(1, args.reloads + 1)]
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    # CPU the loop's thread used between two ticks: its own blocking, apart from waiting for
    # a CPU (this machine may be shared) or for the GIL
    blocks: list[float] = []
    probe_stop = False

    def probe(expected: float, cpu: float) -> None:
        now = loop.time()
        now_cpu = time.thread_time()
        lags.append(now - expected)
        blocks.append(now_cpu - cpu)
        if not probe_stop:
            loop.call_at(now + 0.001, probe, now + 0.001, now_cpu)

    loop.call_soon(probe, loop.time(), time.thread_time())
    host, port = server.address()
    seconds = 1.0 + args.reloads * 0.5 + 1.0
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CLIENT,
        host,
        str(port),
        str(args.rate),
        str(seconds),
        stdout=subprocess.PIPE,
    )
    await asyncio.sleep(1.0)
    counters = server.raw_stats()[0]
    cx_before = counters.get("cluster.nginx.upstream_cx_total", 0)
    durations: list[float] = []
    reload_lag = reload_block = 0.0
    for gen, text in enumerate(texts, 1):
        boot.write_text(text)
        mark = len(lags)
        t0 = time.perf_counter()
        ok = await server.reload(f"reload {gen}")
        durations.append(time.perf_counter() - t0)
        assert ok, "reload rejected"
        await asyncio.sleep(0.01)  # the probe's first tick after the swap counts too
        reload_lag = max([reload_lag, *lags[mark:]])
        reload_block = max([reload_block, *blocks[mark:]])
        await asyncio.sleep(max(0.0, 0.5 - durations[-1] - 0.01))
    out, _ = await client.communicate()
    probe_stop = True
    counters = server.raw_stats()[0]
    cx_after = counters.get("cluster.nginx.upstream_cx_total", 0)
    await server.stop()
    result = json.loads(out)
    lat = sorted(result["lat"])
    return {
        "requests": len(lat),
        "errors": result["errors"],
        "p50_ms": round(statistics.median(lat) * 1000, 2),
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 2),
        "max_ms": round(lat[-1] * 1000, 2),
        "loop_max_lag_ms": round(max(lags) * 1000, 2),
        "loop_max_lag_during_reloads_ms": round(reload_lag * 1000, 2),
        "loop_max_cpu_block_ms": round(max(blocks) * 1000, 2),
        "loop_max_cpu_block_during_reloads_ms": round(reload_block * 1000, 2),
        "reload_s": [round(d, 3) for d in durations],
        "upstream_cx_opened_during_reloads": cx_after - cx_before,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--routes", type=int, default=300)
    parser.add_argument(
        "--in-thread",
        action="store_true",
        help="load in a thread of the serving process, as before issue 12 (for comparison)",
    )
    args = parser.parse_args()
    nginx_bin = find_nginx()
    if nginx_bin is None:
        print("nginx not found", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="reload-latency-"))
    root = work / "www"
    root.mkdir()
    (root / "index.html").write_bytes(index_html())
    sock = str(work / "nginx.sock")
    nginx = NginxInstance(
        nginx_bin, work / "nginx", sock, root, keepalive_requests=1_000_000
    ).start()
    try:
        result = uvloop.run(_run(args, work, sock))
    finally:
        nginx.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
