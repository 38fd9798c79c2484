"""Route table compiled once from a RouteConfiguration. Pure: no I/O.

Route shaping (header mutations of the three levels, host rewrites, direct_response bodies) is
compiled here too (a direct_response body given as a file or a variable was read when the
config was loaded).

Virtual hosts are searched the way Envoy does: exact domain, then the longest suffix wildcard
(``*.example.com``), then the longest prefix wildcard (``example.*``), then ``*``. Routes inside a
virtual host are tried in order; the first match wins. Paths are matched without the query string.
"""

from __future__ import annotations

import re
from typing import Any

from udsproxy.codec import http1
from udsproxy.config import schema
from udsproxy.config.datasource import read as read_data_source
from udsproxy.config.filter_schema import Fraction
from udsproxy.headers import HeaderMutations, compile_mutations
from udsproxy.router.retry import RetryPolicy

__all__ = ["CompiledRoute", "MirrorPolicy", "RequestShaping", "RouteTable"]

_MAX_HOST_CACHE = 1024


class RequestShaping:
    """What a route changes in the request it forwards: header mutations, then the Host."""

    __slots__ = ("append_xfh", "auto_host", "host_header", "host_literal", "mutations")

    def __init__(self, action: schema.RouteAction, mutations: HeaderMutations | None) -> None:
        self.mutations = mutations
        literal = action.host_rewrite_literal
        self.host_literal = literal.encode() if literal is not None else None
        self.auto_host = action.auto_host_rewrite
        header = action.host_rewrite_header
        self.host_header = header.encode() if header is not None else None
        self.append_xfh = action.append_x_forwarded_host

    @staticmethod
    def needed(action: schema.RouteAction, mutations: HeaderMutations | None) -> bool:
        return mutations is not None or bool(
            action.host_rewrite_literal or action.auto_host_rewrite or action.host_rewrite_header
        )


class MirrorPolicy:
    """One of a route's request_mirror_policies: the shadow cluster, how many requests go there
    (runtime_fraction), and the Host the shadow carries."""

    __slots__ = ("cluster", "fraction", "host_literal", "suffix")

    def __init__(self, policy: schema.RequestMirrorPolicy) -> None:
        self.cluster = policy.cluster
        self.fraction = Fraction(
            numerator=policy.numerator,
            denominator=policy.denominator,
            runtime_key=policy.runtime_key,
        )
        literal = policy.host_rewrite_literal
        self.host_literal = literal.encode() if literal is not None else None
        self.suffix = not policy.disable_shadow_host_suffix_append


_NO_ACTION = schema.RouteAction(cluster="")  # a direct_response route's: nothing upstream


def _levels(
    route: schema.Route, vhost: schema.VirtualHost, config: schema.RouteConfiguration, side: str
) -> list[tuple[tuple[schema.HeaderValueOption, ...], tuple[str, ...]]]:
    """(headers_to_add, headers_to_remove) of one side, route first."""
    return [
        (getattr(x, f"{side}_headers_to_add"), getattr(x, f"{side}_headers_to_remove"))
        for x in (route, vhost, config)
    ]


class CompiledRoute:
    """Everything the data path needs from a route, precomputed. The optional parts are None
    when not configured, so the data path tests one attribute each."""

    __slots__ = (
        "attempt_count_header",
        "attempt_count_in_response",
        "cluster",
        "direct_response",
        "expected_timeout_header",
        "filter_configs",
        "filter_levels",
        "idle_timeout",
        "mirror_policies",
        "name",
        "prefix",
        "prefix_rewrite",
        "request_shaping",
        "response_mutations",
        "retry_policy",
        "timeout",
        "upgrade_types",
        "vhost_name",
        "watch_responses",
    )

    def __init__(
        self,
        route: schema.Route,
        vhost: schema.VirtualHost,
        hcm_upgrades: tuple[schema.UpgradeConfig, ...],
        config: schema.RouteConfiguration | None = None,
        stream_idle_timeout: float = 0.0,
    ) -> None:
        config = config if config is not None else schema.RouteConfiguration()
        action = route.route if route.route is not None else _NO_ACTION
        self.name = route.name or None
        self.vhost_name = vhost.name
        # typed_per_filter_config, route level first: what filters.FilterChain compiles into
        # filter_configs (filter name -> what that filter made of them)
        levels = ({f.name: f.config for f in x.typed_per_filter_config} for x in (route, vhost))
        self.filter_levels = tuple(x for x in levels if x)
        self.filter_configs: dict[str, Any] = {}
        wins = config.most_specific_header_mutations_wins
        request = compile_mutations(
            _levels(route, vhost, config, "request"), most_specific_wins=wins
        )
        self.request_shaping = (
            RequestShaping(action, request) if RequestShaping.needed(action, request) else None
        )
        # the connection manager sets server afterwards (server_name): a route's has no effect
        self.response_mutations = compile_mutations(
            _levels(route, vhost, config, "response"),
            most_specific_wins=wins,
            skip=frozenset({"server"}),
        )
        self.direct_response = _direct_response(route.direct_response, config)
        self.cluster = action.cluster
        # the route's retry_policy, else its virtual host's; None: no retries
        policy = action.retry_policy or vhost.retry_policy
        self.retry_policy = RetryPolicy.compile(policy) if policy is not None else None
        self.attempt_count_header = vhost.include_request_attempt_count
        self.attempt_count_in_response = vhost.include_attempt_count_in_response
        # the router follows this route's responses (a RetryState): a retry policy may retry
        # them, or x-envoy-attempt-count goes into them
        self.watch_responses = self.retry_policy is not None or self.attempt_count_in_response
        self.timeout = action.timeout
        # None without mirroring: the router tests this one attribute when a request completes
        self.mirror_policies = (
            tuple(MirrorPolicy(p) for p in action.request_mirror_policies) or None
        )
        # the stream idle timeout that applies: the route's, else the connection manager's
        # stream_idle_timeout (0: none)
        self.idle_timeout = (
            action.idle_timeout if action.idle_timeout is not None else stream_idle_timeout
        )
        ms = int(action.timeout * 1000)
        # Envoy sends the route timeout upstream whenever it is set.
        self.expected_timeout_header = (
            b"x-envoy-expected-rq-timeout-ms: %d\r\n" % ms if ms > 0 else b""
        )
        self.prefix = route.match.prefix.encode() if route.match.prefix is not None else None
        self.prefix_rewrite = (
            action.prefix_rewrite.encode() if action.prefix_rewrite is not None else None
        )
        # A route's upgrade_configs override the connection manager's for the same type.
        enabled = {u.upgrade_type.lower(): u.enabled for u in hcm_upgrades}
        for u in action.upgrade_configs:
            enabled[u.upgrade_type.lower()] = u.enabled
        self.upgrade_types = frozenset(t.encode() for t, on in enabled.items() if on)

    def rewrite(self, path: bytes) -> bytes:
        """Apply prefix_rewrite; the caller keeps the original for x-envoy-original-path.

        As in Envoy, a prefix route replaces the matched prefix, and a path or safe_regex route
        replaces the whole matched path; the query string stays.
        """
        if self.prefix_rewrite is None:
            return path
        if self.prefix is None:
            _, sep, query = path.partition(b"?")
            return self.prefix_rewrite + sep + query
        return self.prefix_rewrite + path[len(self.prefix) :]


def _direct_response(
    direct: schema.DirectResponse | None, config: schema.RouteConfiguration
) -> http1.LocalReply | None:
    if direct is None:
        return None
    # inline by now: convert checked inline bodies, dynamic.resolve read and checked the others
    body = b"" if direct.body is None else read_data_source(direct.body)
    return http1.LocalReply(direct.status, body, 0, "direct_response", router=True)


class _Matcher:
    __slots__ = ("case_sensitive", "kind", "regex", "route", "value")

    def __init__(self, route: schema.Route, compiled: CompiledRoute) -> None:
        m = route.match
        self.route = compiled
        self.case_sensitive = m.case_sensitive
        self.regex: re.Pattern[bytes] | None = None
        if m.safe_regex is not None:
            self.kind = 2
            self.value = b""
            self.regex = re.compile(m.safe_regex.encode())
        elif m.path is not None:
            self.kind = 1
            self.value = m.path.encode() if m.case_sensitive else m.path.lower().encode()
        else:
            self.kind = 0
            prefix = m.prefix or ""
            self.value = prefix.encode() if m.case_sensitive else prefix.lower().encode()

    def matches(self, path: bytes) -> bool:
        if self.kind == 2:
            assert self.regex is not None
            return self.regex.fullmatch(path) is not None
        if not self.case_sensitive:
            path = path.lower()
        if self.kind == 0:
            return path.startswith(self.value)
        return path == self.value


class _VirtualHost:
    __slots__ = ("matchers", "name")

    def __init__(
        self,
        vhost: schema.VirtualHost,
        hcm_upgrades: tuple[schema.UpgradeConfig, ...],
        config: schema.RouteConfiguration,
        stream_idle_timeout: float,
    ) -> None:
        self.name = vhost.name
        self.matchers = tuple(
            _Matcher(r, CompiledRoute(r, vhost, hcm_upgrades, config, stream_idle_timeout))
            for r in vhost.routes
        )

    def match(self, path: bytes) -> CompiledRoute | None:
        q = path.find(b"?")
        if q >= 0:
            path = path[:q]
        for m in self.matchers:
            if m.matches(path):
                return m.route
        return None


class RouteTable:
    """A route configuration, compiled: virtual hosts by domain, then routes in order."""

    def __init__(
        self,
        config: schema.RouteConfiguration,
        hcm_upgrades: tuple[schema.UpgradeConfig, ...] = (),
        stream_idle_timeout: float = 0.0,
    ) -> None:
        self._exact: dict[bytes, _VirtualHost] = {}
        suffixes: list[tuple[bytes, _VirtualHost]] = []
        prefixes: list[tuple[bytes, _VirtualHost]] = []
        self._default: _VirtualHost | None = None
        self._vhosts: list[_VirtualHost] = []
        for vh in config.virtual_hosts:
            compiled = _VirtualHost(vh, hcm_upgrades, config, stream_idle_timeout)
            self._vhosts.append(compiled)
            for domain in vh.domains:
                d = domain.lower().encode()
                if d == b"*":
                    self._default = compiled
                elif d.startswith(b"*"):
                    suffixes.append((d[1:], compiled))
                elif d.endswith(b"*"):
                    prefixes.append((d[:-1], compiled))
                else:
                    self._exact.setdefault(d, compiled)
        # Longest wildcard wins, as in Envoy.
        self._suffixes = sorted(suffixes, key=lambda s: -len(s[0]))
        self._prefixes = sorted(prefixes, key=lambda p: -len(p[0]))
        self._host_cache: dict[bytes, _VirtualHost | None] = {}
        # The common table, one "*" virtual host whose first route is prefix "/": every origin-
        # form path goes there whatever the Host, so a request costs this one test.
        first = self._vhosts[0].matchers[:1] if len(self._vhosts) == 1 else ()
        self.catch_all: CompiledRoute | None = None
        if (
            first
            and self._default is self._vhosts[0]
            and not (self._exact or suffixes or prefixes)
            and first[0].kind == 0
            and first[0].value == b"/"
        ):
            self.catch_all = first[0].route

    def routes(self) -> list[CompiledRoute]:
        """Every route, once (for what is compiled per route after the table, e.g. filters)."""
        return [m.route for vh in self._vhosts for m in vh.matchers]

    def _find_vhost(self, host: bytes) -> _VirtualHost | None:
        vh = self._exact.get(host)
        if vh is not None:
            return vh
        for suffix, vh in self._suffixes:
            if host.endswith(suffix) and len(host) > len(suffix):
                return vh
        for prefix, vh in self._prefixes:
            if host.startswith(prefix) and len(host) > len(prefix):
                return vh
        return None

    def virtual_host(self, authority: bytes) -> _VirtualHost | None:
        try:
            return self._host_cache[authority]
        except KeyError:
            pass
        host = authority.lower()
        vh = self._find_vhost(host)
        if vh is None:
            # "example.com:8080" also matches a vhost for "example.com".
            colon = host.rfind(b":")
            if colon > 0 and host[colon + 1 :].isdigit() and not host.endswith(b"]"):
                vh = self._find_vhost(host[:colon])
        if vh is None:
            vh = self._default
        if len(self._host_cache) < _MAX_HOST_CACHE:  # hosts are client-chosen: bound it
            self._host_cache[authority] = vh
        return vh

    def match(self, authority: bytes, path: bytes) -> CompiledRoute | None:
        if self.catch_all is not None and path[:1] == b"/":
            return self.catch_all
        vh = self.virtual_host(authority)
        if vh is None:
            return None
        return vh.match(path)
