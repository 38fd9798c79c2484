"""envoy.filters.http.rbac: allow or deny requests by policies (``rules``) or by a matcher tree
(``matcher``), answered with 403 "RBAC: access denied" and %RESPONSE_CODE_DETAILS%
``rbac_access_denied_matched_policy[<policy>]`` (``none`` when no policy matched). Envoy sets no
response flag for it. ``shadow_rules`` are evaluated for their stats only.

Supported permissions: ``any``, ``header``, ``url_path``, ``destination_port``,
``destination_ip``, ``and_rules``, ``or_rules``, ``not_rule``. Principals: ``any``, ``header``,
``url_path``, ``remote_ip``, ``direct_remote_ip``, ``source_ip``, ``and_ids``, ``or_ids``,
``not_id``. Matcher: ``matcher_list`` of request-header predicates (single, and, or, not) and
``on_no_match``. Stats: ``http.<stat_prefix>.rbac.[<rules_stat_prefix>]allowed/denied`` and
``shadow_allowed/shadow_denied``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from udsproxy.codec import http1
from udsproxy.config.filter_schema import MatcherRules, Rbac, Rule, Rules
from udsproxy.filters.base import HttpFilter, LocalAnswer, Outcome
from udsproxy.headermatch import HeaderMatch, StringMatch

if TYPE_CHECKING:
    from udsproxy.filters.base import FilterCallbacks
    from udsproxy.router.routes import CompiledRoute
    from udsproxy.stats.store import FilterStats

__all__ = ["RbacFilter"]

DENIED_BODY = "RBAC: access denied"


# --- the matcher form -------------------------------------------------------------------------


# --- evaluation ---------------------------------------------------------------------------------

Check = Callable[["FilterCallbacks"], bool]


def _compile(rule: Rule) -> Check:
    """A rule as a function of the request, built once at config time."""
    kind = rule.kind
    if kind == "any":
        return lambda s: True
    if kind == "header":
        assert rule.header is not None
        return HeaderMatch(rule.header).match
    if kind == "url_path":
        assert rule.string is not None
        path_matcher = StringMatch(rule.string)
        return lambda s: path_matcher.match(s.path.partition(b"?")[0])
    if kind == "port":
        port = rule.port
        return lambda s: s.downstream_local is not None and s.downstream_local.port == port
    if kind in ("ip", "direct_ip", "dest_ip"):
        network = ipaddress.ip_network(rule.cidr)
        attr = {
            "ip": "downstream_remote",
            "direct_ip": "downstream_direct_remote",
            "dest_ip": "downstream_local",
        }[kind]
        return lambda s: _in_network(getattr(s, attr), network)
    inner = tuple(_compile(r) for r in rule.rules)
    if kind == "not":
        check = inner[0]
        return lambda s: not check(s)
    if kind == "and":
        return lambda s: all(c(s) for c in inner)
    return lambda s: any(c(s) for c in inner)


def _in_network(peer: Any, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if peer is None or peer.port is None:
        return False  # a pipe peer has no IP
    try:
        return ipaddress.ip_address(peer.host) in network
    except ValueError:
        return False


class _Engine:
    """Rules or a matcher, compiled: ``decide`` gives (allowed, policy name or "none")."""

    __slots__ = ("allow", "cases", "no_match", "policies")

    def __init__(self, rules: Rules | MatcherRules) -> None:
        self.policies: tuple[tuple[str, Check, Check], ...] = ()
        self.cases: tuple[tuple[Check, str, bool], ...] = ()
        self.no_match: tuple[str, bool] | None = None
        self.allow = True
        if isinstance(rules, Rules):
            self.allow = rules.action == "ALLOW"
            self.policies = tuple(
                (
                    p.name,
                    _compile(Rule(kind="or", rules=p.permissions)),
                    _compile(Rule(kind="or", rules=p.principals)),
                )
                for p in rules.policies
            )
        else:
            self.cases = tuple((_compile(c.predicate), c.name, c.allow) for c in rules.cases)
            self.no_match = rules.no_match
            self.allow = False

    def decide(self, s: FilterCallbacks) -> tuple[bool, str]:
        if self.cases or self.no_match is not None:
            for check, name, allow in self.cases:
                if check(s):
                    return allow, name
            if self.no_match is None:
                return True, "none"
            return self.no_match[1], self.no_match[0]
        matched = next((name for name, perm, prin in self.policies if perm(s) and prin(s)), None)
        if self.allow:
            return matched is not None, matched or "none"
        return matched is None, matched or "none"


class _Compiled:
    """One Rbac compiled (the filter's or a route's)."""

    __slots__ = ("engine", "shadow")

    def __init__(self, config: Rbac) -> None:
        self.engine = _Engine(config.rules) if config.rules is not None else None
        self.shadow = _Engine(config.shadow_rules) if config.shadow_rules is not None else None


_replies: dict[str, http1.LocalReply] = {}


def denied_reply(policy: str) -> http1.LocalReply:
    reply = _replies.get(policy)
    if reply is None:
        details = f"rbac_access_denied_matched_policy[{policy}]"
        reply = http1.LocalReply(403, DENIED_BODY, 0, details)
        if len(_replies) < 1024:  # policy names come from the config: few
            _replies[policy] = reply
    return reply


class RbacFilter(HttpFilter):
    def __init__(self, name: str, config: Rbac, stats: FilterStats) -> None:
        self.name = name
        self.compiled = _Compiled(config)
        self.stats = stats
        counters = stats.counter_set()
        self.allowed = config.rules_stat_prefix + "allowed"
        self.denied = config.rules_stat_prefix + "denied"
        self.shadow_allowed = config.shadow_rules_stat_prefix + "shadow_allowed"
        self.shadow_denied = config.shadow_rules_stat_prefix + "shadow_denied"
        stats.counter_set(self.allowed, self.denied, self.shadow_allowed, self.shadow_denied)
        self.counters = counters

    def compile_route(self, configs: tuple[Any, ...]) -> _Compiled:
        return _Compiled(configs[0])

    def decode_headers(self, s: FilterCallbacks, route: CompiledRoute | None) -> Outcome:
        compiled: _Compiled = self.compiled
        if route is not None:
            compiled = route.filter_configs.get(self.name, compiled)
        counters = self.counters
        if compiled.shadow is not None:
            ok, _ = compiled.shadow.decide(s)
            counters[self.shadow_allowed if ok else self.shadow_denied] += 1
        if compiled.engine is None:
            return None
        ok, policy = compiled.engine.decide(s)
        if ok:
            counters[self.allowed] += 1
            return None
        counters[self.denied] += 1
        return LocalAnswer(denied_reply(policy))
