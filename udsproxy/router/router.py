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
from udsproxy.flags import ResponseFlag
from udsproxy.http.header_mutation import append_forwarded_host
from udsproxy.router import shadow as mirroring
from udsproxy.router.retry import NO_POLICY, RetryState
from udsproxy.router.upstream_request import UpstreamRequest
from udsproxy.upstream.cluster import connect_failure_reason
from udsproxy.upstream.pool import PoolOverflow
from udsproxy.upstream_tls import TlsConnectError

if TYPE_CHECKING:
    from udsproxy.codec.response import ResponseDecoder
    from udsproxy.http.active_stream import ActiveStream
    from udsproxy.router.routes import CompiledRoute, RequestShaping
    from udsproxy.upstream.cluster import Cluster, Host
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
        host = self._pick(s, cluster, None)
        if host is None:
            return
        s.head = self._encode_head(s, route)
        if s.expect_continue and not s.request_complete and not s.http10:
            s.conn.write(_CONTINUE)
        if route.watch_responses or s.envoy_retry is not None:
            self._retry_state(s, route, cluster)
        upstream = s.upstream = UpstreamRequest(s, host, self)
        upstream.start()
        if s.request_complete and not s.done:
            s.arm_route_timeout()
            if route.mirror_policies is not None:
                mirroring.shadow(s, route)  # request_mirror_policies (router/shadow.py)

    def _retry_state(self, s: ActiveStream, route: CompiledRoute, cluster: Cluster) -> None:
        """The stream's RetryState, when the route has a retry policy (for a request it
        applies to), asks for x-envoy-attempt-count in responses, or, off the edge, the
        request carries x-envoy-retry-on / x-envoy-max-retries (Envoy honours them where it
        does not sanitize them)."""
        policy = route.retry_policy
        if s.envoy_retry is not None and not s.ctx.use_remote_address:
            policy = (policy or NO_POLICY).with_headers(s.envoy_retry)
        if (policy is not None and policy.applies(s)) or route.attempt_count_in_response:
            s.retry_state = RetryState(policy or NO_POLICY, cluster.resources)

    def shadow(self, s: ActiveStream, route: CompiledRoute) -> None:
        """A request with mirror policies is complete (the stream's decode_complete)."""
        mirroring.shadow(s, route)

    def _pick(self, s: ActiveStream, cluster: Cluster, avoid: Host | None) -> Host | None:
        """The host of the next try (the stream's from now on), or None: answered 503 UH."""
        host = cluster.pick(avoid)
        if host is None:
            cluster.stats.upstream_cx_none_healthy += 1
            s.local_reply(http1.NO_HEALTHY_UPSTREAM)
            return None
        s.host = host
        s.upstream_host = host.text
        return host

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
        head = s.head
        route = s.route
        if route is not None and route.attempt_count_header:
            head = b"%sx-envoy-attempt-count: %d\r\n\r\n" % (head[:-2], s.attempt_count)
        data = [head]
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
        rs = s.retry_state
        if isinstance(exc, PoolOverflow):
            # a circuit breaker: never retried (Envoy)
            reply = http1.PENDING_OVERFLOW
            s.local_reply(reply if rs is None or not rs.retried else http1.retried(reply),
                          extra=http1.OVERLOADED_HEADERS)  # fmt: skip
            return
        host = upstream.host
        if host.outlier is not None:  # a breaker's overflow (above) is not the host's failure
            host.outlier.put_connect_failure()
        reason = connect_failure_reason(exc)
        s.upstream_transport_failure_reason = reason
        host.cx_connect_fail += 1
        cs = host.cluster.stats
        cs.upstream_cx_connect_fail += 1
        if reason == "connection timeout":
            cs.upstream_cx_connect_timeout += 1
        # a TLS handshake's reply names its failure
        reply = exc.reply if isinstance(exc, TlsConnectError) else http1.CONNECT_FAILURE
        if rs is not None:
            if rs.policy.retriable_reset(True) and self._retry(s, rs, host):
                return
            if rs.retried:
                reply = http1.retried(reply)
        s.local_reply(reply)

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
        outlier = upstream.host.outlier
        if outlier is not None and not (no_response and upstream.reused):  # stale: not counted
            outlier.put_reset()
        if s.response_started:
            s.response_flags |= reply.flag
            s.response_code_details = reply.late_details
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
        rs = s.retry_state
        if rs is not None:
            if rs.policy.retriable_reset(False) and self._retry(s, rs, upstream.host):
                return
            if rs.retried:
                reply = http1.retried(reply)
        s.local_reply(reply)

    # -- retries (route retry_policy) ----------------------------------------------------------
    def on_response(
        self, s: ActiveStream, upstream: UpstreamRequest, codec: ResponseDecoder
    ) -> bool:
        """A try's response head, before it goes downstream (streams with a RetryState only).
        True: it is retried instead (the try's connection is dropped)."""
        rs = s.retry_state
        assert rs is not None
        code = codec.status
        if rs.policy.retriable_response(code, codec.headers):
            if self._retry(s, rs, upstream.host):
                conn = upstream.conn
                upstream.conn = None
                if conn is not None:
                    conn.codec.callbacks = None  # the rest of this response is not relayed
                    conn.abort()
                return True
        elif rs.retried:
            upstream.host.cluster.stats.upstream_rq_retry_success += 1
        rs.try_deadline = 0.0  # the response goes downstream: the route timeout alone now
        if s.route is not None and s.route.attempt_count_in_response:
            codec.headers.append((b"x-envoy-attempt-count", b"%d" % s.attempt_count))
            codec.block = None
        return False

    def _retry(self, s: ActiveStream, rs: RetryState, host: Host) -> bool:
        """Schedule another try if the request, the policy, the breaker and the clock allow.
        The caller checked the failure is one the policy retries."""
        if s.response_started or not s.request_complete or not s.retain_body or rs.interim_sent:
            return False
        cs = host.cluster.stats
        if rs.retried >= rs.policy.num_retries:
            cs.upstream_rq_retry_limit_exceeded += 1
            s.response_flags |= ResponseFlag.URX
            return False
        loop = s.ctx.loop
        delay = rs.back_off()
        if s.deadline and loop.time() + delay >= s.deadline:
            return False  # the route timeout covers every try: it fires first
        res = rs.resources
        if not rs.holding:
            if res is not None and res.retries >= res.max_retries:
                cs.upstream_rq_retry_overflow += 1
                s.response_flags |= ResponseFlag.UO
                return False
            rs.holding = True
            if res is not None:
                res.retries += 1
        rs.retried += 1
        rs.try_deadline = 0.0
        rs.failed_host = host
        cs.upstream_rq_retry += 1
        cs.upstream_rq_retry_backoff_exponential += 1
        s.upstream = None
        rs.timer = loop.call_later(delay, self._start_retry, s, host.cluster)
        return True

    def _start_retry(self, s: ActiveStream, cluster: Cluster) -> None:
        rs = s.retry_state
        assert rs is not None
        rs.timer = None
        if s.done:
            return
        host = self._pick(s, cluster, rs.failed_host)
        if host is None:
            return
        upstream = s.upstream = UpstreamRequest(s, host, self)
        upstream.start()  # its per_try_timeout starts with its connection (on_pool_ready)

    def on_per_try_timeout(self, s: ActiveStream) -> None:
        """The try in flight took longer than per_try_timeout: retried, or 504 UT."""
        upstream = s.upstream
        if s.done or s.response_started or not isinstance(upstream, UpstreamRequest):
            return  # a response under way: only the route timeout applies (Envoy)
        host = upstream.host
        host.cluster.stats.upstream_rq_per_try_timeout += 1
        if host.outlier is not None:
            host.outlier.put_timeout(upstream.conn is not None)
        s.upstream = None
        upstream.reset()
        rs = s.retry_state
        assert rs is not None
        if rs.policy.retriable_reset(False) and self._retry(s, rs, host):
            return
        s.local_reply(http1.UPSTREAM_PER_TRY_TIMEOUT)


ROUTER = Router()
