"""The router (Envoy's router filter): a matched route to a cluster, a host, and one upstream
request per try; and the one place a try's failure is decided.

It keeps no state: what it reads is compiled into the listener's context (the route table, the
clusters), what it writes is on the stream and its ``UpstreamRequest``. ``ROUTER`` is the one
instance.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from udsproxy.codec import http1
from udsproxy.codec.encode import CRLF, LAST_CHUNK, chunk_head, request_head
from udsproxy.codec.http1 import LocalReply
from udsproxy.http.header_mutation import append_forwarded_host
from udsproxy.router.upstream_request import UpstreamRequest
from udsproxy.upstream.cluster import connect_failure_reason
from udsproxy.upstream.pool import PoolOverflow
from udsproxy.upstream_tls import TlsConnectError

if TYPE_CHECKING:
    from udsproxy.http.active_stream import ActiveStream
    from udsproxy.router.routes import CompiledRoute, RequestShaping
    from udsproxy.upstream.connection import UpstreamConnection

__all__ = ["ROUTER", "Router"]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Router:
    __slots__ = ()

    def decode_headers(self, s: ActiveStream, route: CompiledRoute) -> None:
        """The route was found: answer it directly, or pick a host and start the first try."""
        s.route = route
        s.route_name = route.name
        if s.upgrade is not None and s.upgrade.lower() not in route.upgrade_types:
            s.local_reply(http1.UPGRADE_FAILED, close=True)
            return
        if route.direct_response is not None:
            s.ctx.http_stats.rq_direct_response += 1
            s.local_reply(route.direct_response)
            return
        cluster = s.ctx.clusters.get(route.cluster)
        if cluster is None:
            s.local_reply(http1.NO_CLUSTER)
            return
        s.upstream_cluster = cluster.name
        host = cluster.pick()
        if host is None:
            cluster.stats.upstream_cx_none_healthy += 1
            s.local_reply(http1.NO_HEALTHY_UPSTREAM)
            return
        s.host = host
        s.upstream_host = host.text
        s.head = self._encode_head(s, route)
        if s.expect_continue and not s.request_complete and not s.http10:
            s.conn.write(_CONTINUE)
        upstream = s.upstream = UpstreamRequest(s, host, self)
        upstream.start()
        if s.request_complete and not s.done:
            s.arm_route_timeout()

    def _encode_head(self, s: ActiveStream, route: CompiledRoute) -> bytes:
        if route.request_shaping is not None:
            self._shape_request(s, route.request_shaping)
        path = s.path
        if route.prefix_rewrite is not None:
            new_path = route.rewrite(path)
            if new_path != path:
                # %REQ(:PATH)% shows what went upstream; the default format logs the original
                s.headers.append((b"x-envoy-original-path", path))
                path = s.path = new_path
        return request_head(
            s.method,
            path,
            s.authority or s.ctx.default_host,
            s.headers,
            route.expected_timeout_header,
            s.req_chunked,
            s.req_cl,
            s.upgrade,
        )

    def _shape_request(self, s: ActiveStream, shaping: RequestShaping) -> None:
        """The route's request header mutations, then its Host rewrite (Envoy's order)."""
        headers = s.headers
        if shaping.mutations is not None:
            shaping.mutations.apply(headers, s)
        new_host = shaping.host_literal
        if new_host is None and shaping.host_header is not None:
            new_host = next((v for n, v in headers if n == shaping.host_header), None) or None
        if new_host is None and shaping.auto_host and s.host is not None:
            new_host = s.host.auto_host()
        if new_host is None:
            return
        old = s.authority
        if shaping.append_xfh and old:
            append_forwarded_host(headers, old)
        s.authority = new_host  # what goes upstream, and what %REQ(:AUTHORITY)% logs

    def encode_request(self, s: ActiveStream) -> list[bytes]:
        """The head and the body held so far (and the last chunk if the request is whole)."""
        data = [s.head]
        if s.body:
            if s.req_chunked:
                for chunk in s.body:
                    data += (chunk_head(len(chunk)), chunk, CRLF)
            else:
                data += s.body
        if s.request_complete and s.req_coder is None:
            if s.req_chunked:
                data.append(LAST_CHUNK)
            s.last_upstream_tx_mono = time.monotonic()
        return data

    def release(self, s: ActiveStream, upstream: UpstreamRequest, conn: UpstreamConnection) -> None:
        """The response is complete: the connection goes back to its pool, unless the request
        body was not all sent (the connection would be out of sync)."""
        host = upstream.host
        conn.done()
        max_rq = host.cluster.max_requests_per_connection
        if max_rq and conn.requests >= max_rq:
            host.cluster.stats.upstream_cx_max_requests += 1
        if s.request_complete and s.req_coder is None:
            host.pool.release(conn)
        else:
            conn.close()  # the request was not all sent (a decompressor may still hold some)

    # -- failures: one path -------------------------------------------------------------------
    def on_connect_failure(
        self, s: ActiveStream, upstream: UpstreamRequest, exc: BaseException
    ) -> None:
        if s.done or s.upstream is not upstream:
            return
        s.upstream = None
        if isinstance(exc, PoolOverflow):
            s.local_reply(http1.PENDING_OVERFLOW)
            return
        host = upstream.host
        reason = connect_failure_reason(exc)
        s.upstream_transport_failure_reason = reason
        host.cx_connect_fail += 1
        cs = host.cluster.stats
        cs.upstream_cx_connect_fail += 1
        if reason == "connection timeout":
            cs.upstream_cx_connect_timeout += 1
        # a TLS handshake's reply names its failure
        s.local_reply(exc.reply if isinstance(exc, TlsConnectError) else http1.CONNECT_FAILURE)

    def on_upstream_reset(
        self, s: ActiveStream, upstream: UpstreamRequest, reply: LocalReply, no_response: bool
    ) -> None:
        """A try ended without a whole response (the connection closed, or the upstream broke
        the protocol). Before the response started it may be retried, once, if it failed on
        the pool's own stale keep-alive connection; else the client gets ``reply``; after,
        the client's connection is reset and the stream logged with the reply's flag."""
        if s.upstream is upstream:
            s.upstream = None
        if s.done:
            return
        if s.response_started:
            s.response_flags |= reply.flag
            s.conn.abort()
            s.finish(True)
            return
        if (
            reply is http1.CONNECTION_TERMINATION
            and no_response
            and upstream.reused
            and not s.retried
            and s.retain_body
            and s.method in http1.IDEMPOTENT_METHODS
        ):
            # Unseen by the client: retry once on a fresh connection.
            s.retried = True
            retry = s.upstream = UpstreamRequest(s, upstream.host, self)
            retry.start(fresh=True)
            return
        s.local_reply(reply)


ROUTER = Router()
