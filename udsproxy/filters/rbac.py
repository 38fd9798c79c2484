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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from udsproxy import http1
from udsproxy.filters.base import HttpFilter, LocalAnswer, Node, Outcome, Reporter
from udsproxy.filters.matchers import (
    HeaderMatch,
    HeaderMatcher,
    StringMatch,
    StringMatcher,
    parse_header_match,
    parse_string_match,
)

if TYPE_CHECKING:
    from udsproxy.router import CompiledRoute
    from udsproxy.stats.store import FilterStats
    from udsproxy.stream import Stream

__all__ = ["Rbac", "RbacFilter", "Rule", "parse_per_route", "parse_rbac"]

FILTER_TYPE = "envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE_TYPE = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
ACTION_TYPE = "envoy.config.rbac.v3.Action"
HEADER_INPUT = "envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
DENIED_BODY = "RBAC: access denied"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A permission or principal (or a matcher predicate): ``kind`` names its field."""

    kind: str  # any, header, url_path, ip, direct_ip, port, dest_ip, and, or, not
    header: HeaderMatch | None = None
    string: StringMatch | None = None
    cidr: str = ""
    port: int = 0
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    name: str
    permissions: tuple[Rule, ...]
    principals: tuple[Rule, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    """config.rbac.v3.RBAC: ALLOW (allowed when a policy matches) or DENY."""

    action: str = "ALLOW"
    policies: tuple[Policy, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class MatcherCase:
    predicate: Rule
    name: str  # the rbac Action's name: the "policy" of the response details
    allow: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MatcherRules:
    """The ``matcher`` form: the first case whose predicate matches decides, else on_no_match."""

    cases: tuple[MatcherCase, ...] = ()
    no_match: tuple[str, bool] | None = None  # (name, allow); None: allowed


@dataclass(frozen=True, slots=True, kw_only=True)
class Rbac:
    rules: Rules | MatcherRules | None = None  # None: nothing enforced
    shadow_rules: Rules | None = None
    rules_stat_prefix: str = ""
    shadow_rules_stat_prefix: str = ""


def parse_rbac(conv: Reporter, node: Node, path: str) -> Rbac:
    fields = (
        "rules", "matcher", "shadow_rules", "rules_stat_prefix", "shadow_rules_stat_prefix",
    )  # fmt: skip
    conv.only(node, path, fields)
    kw: dict[str, Any] = {
        key: node[key] for key in ("rules_stat_prefix", "shadow_rules_stat_prefix") if key in node
    }
    if "rules" in node:
        kw["rules"] = _rules(conv, node["rules"], f"{path}.rules")
    elif "matcher" in node:
        kw["rules"] = _matcher(conv, node["matcher"], f"{path}.matcher")
    if "shadow_rules" in node:
        kw["shadow_rules"] = _rules(conv, node["shadow_rules"], f"{path}.shadow_rules")
    return Rbac(**kw)


def parse_per_route(conv: Reporter, node: Node, path: str) -> Rbac:
    """RBACPerRoute: its ``rbac`` replaces the filter's; absent, RBAC is off for the route."""
    conv.only(node, path, ("rbac",))
    return parse_rbac(conv, node.get("rbac", {}), f"{path}.rbac")


def _rules(conv: Reporter, node: Node, path: str) -> Rules:
    conv.only(node, path, ("action", "policies"))
    action = node.get("action", "ALLOW")
    if action not in ("ALLOW", "DENY"):
        conv.refuse(f"{path}.action", f"'{action}'", "only ALLOW and DENY")
    policies = []
    for name, policy in sorted(node.get("policies", {}).items()):
        policy_path = f'{path}.policies["{name}"]'
        conv.only(policy, policy_path, ("permissions", "principals"))
        permissions = _list(conv, policy.get("permissions", ()), f"{policy_path}.permissions", True)
        principals = _list(conv, policy.get("principals", ()), f"{policy_path}.principals", False)
        policies.append(Policy(name=name, permissions=permissions, principals=principals))
    return Rules(action=action, policies=tuple(policies))


def _list(conv: Reporter, nodes: Any, path: str, permission: bool) -> tuple[Rule, ...]:
    out = [_rule(conv, x, f"{path}[{i}]", permission) for i, x in enumerate(nodes)]
    return tuple(x for x in out if x is not None)


_PERMISSIONS = {
    "any": "any", "header": "header", "url_path": "url_path", "destination_port": "port",
    "destination_ip": "dest_ip", "and_rules": "and", "or_rules": "or", "not_rule": "not",
}  # fmt: skip
_PRINCIPALS = {
    "any": "any", "header": "header", "url_path": "url_path", "remote_ip": "ip",
    "direct_remote_ip": "direct_ip", "source_ip": "direct_ip", "and_ids": "and", "or_ids": "or",
    "not_id": "not",
}  # fmt: skip


def _rule(conv: Reporter, node: Node, path: str, permission: bool) -> Rule | None:
    names = _PERMISSIONS if permission else _PRINCIPALS
    conv.only(node, path, tuple(names))
    for key, kind in names.items():
        if key not in node:
            continue
        value, sub = node[key], f"{path}.{key}"
        if kind == "any":
            return Rule(kind="any")
        if kind == "header":
            header = parse_header_match(conv, value, sub)
            return Rule(kind="header", header=header) if header is not None else None
        if kind == "url_path":
            conv.only(value, sub, ("path",))
            string = parse_string_match(conv, value.get("path", {}), f"{sub}.path")
            return Rule(kind="url_path", string=string) if string is not None else None
        if kind == "port":
            return Rule(kind="port", port=int(value))
        if kind in ("ip", "direct_ip", "dest_ip"):
            cidr = _cidr(conv, value, sub)
            return Rule(kind=kind, cidr=cidr) if cidr else None
        if kind == "not":
            inner = _rule(conv, value, sub, permission)
            return Rule(kind="not", rules=(inner,)) if inner is not None else None
        list_key = "rules" if permission else "ids"
        conv.only(value, sub, (list_key,))
        return Rule(kind=kind, rules=_list(conv, value.get(list_key, ()), sub, permission))
    return None


def _cidr(conv: Reporter, node: Node, path: str) -> str:
    conv.only(node, path, ("address_prefix", "prefix_len"))
    text = f"{node.get('address_prefix', '')}/{node.get('prefix_len', 0)}"
    if "prefix_len" not in node:
        # prefix_len absent (0 in the canonical tree): Envoy reads it as the full address
        text = node.get("address_prefix", "")
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        conv.error(path, f"'{text}' is not a CIDR range")
        return ""


# --- the matcher form -------------------------------------------------------------------------


def _matcher(conv: Reporter, node: Node, path: str) -> MatcherRules:
    conv.only(node, path, ("matcher_list", "on_no_match"))
    cases = []
    if "matcher_list" in node:
        list_path = f"{path}.matcher_list"
        conv.only(node["matcher_list"], list_path, ("matchers",))
        for i, m in enumerate(node["matcher_list"].get("matchers", ())):
            m_path = f"{list_path}.matchers[{i}]"
            conv.only(m, m_path, ("predicate", "on_match"))
            predicate = _predicate(conv, m.get("predicate", {}), f"{m_path}.predicate")
            action = _on_match(conv, m.get("on_match", {}), f"{m_path}.on_match")
            if predicate is not None and action is not None:
                cases.append(MatcherCase(predicate=predicate, name=action[0], allow=action[1]))
    no_match = None
    if "on_no_match" in node:
        no_match = _on_match(conv, node["on_no_match"], f"{path}.on_no_match")
    return MatcherRules(cases=tuple(cases), no_match=no_match)


def _on_match(conv: Reporter, node: Node, path: str) -> tuple[str, bool] | None:
    conv.only(node, path, ("action",))
    action = node.get("action")
    if action is None:
        conv.refuse(path, note="only an action (nested matchers are not supported)")
        return None
    conv.only(action, f"{path}.action", ("name", "typed_config"))
    config = action.get("typed_config", {})
    config_path = f"{path}.action.typed_config"
    if config.get("@type") != ACTION_TYPE:
        conv.refuse(config_path, f"action '{config.get('@type') or ''}'", f"only {ACTION_TYPE}")
        return None
    conv.only(config, config_path, ("name", "action"))
    kind = config.get("action", "ALLOW")
    if kind not in ("ALLOW", "DENY"):
        conv.refuse(f"{config_path}.action", f"'{kind}'", "only ALLOW and DENY")
    return config.get("name", ""), kind == "ALLOW"


def _predicate(conv: Reporter, node: Node, path: str) -> Rule | None:
    conv.only(node, path, ("single_predicate", "or_matcher", "and_matcher", "not_matcher"))
    if "not_matcher" in node:
        inner = _predicate(conv, node["not_matcher"], f"{path}.not_matcher")
        return Rule(kind="not", rules=(inner,)) if inner is not None else None
    for key, kind in (("or_matcher", "or"), ("and_matcher", "and")):
        if key in node:
            conv.only(node[key], f"{path}.{key}", ("predicate",))
            parts = [
                _predicate(conv, x, f"{path}.{key}.predicate[{i}]")
                for i, x in enumerate(node[key].get("predicate", ()))
            ]
            return Rule(kind=kind, rules=tuple(x for x in parts if x is not None))
    if "single_predicate" not in node:
        return None
    single, sub = node["single_predicate"], f"{path}.single_predicate"
    conv.only(single, sub, ("input", "value_match"))
    source = single.get("input", {}).get("typed_config", {})
    if source.get("@type") != HEADER_INPUT:
        what = f"matcher input '{source.get('@type') or ''}'"
        conv.refuse(f"{sub}.input", what, "only request headers (HttpRequestHeaderMatchInput)")
        return None
    conv.only(source, f"{sub}.input.typed_config", ("header_name",))
    if "value_match" not in single:
        conv.refuse(sub, note="only value_match")
        return None
    string = parse_string_match(conv, single["value_match"], f"{sub}.value_match")
    if string is None:
        return None
    # A missing header gives no value, which no value_match matches (xDS matcher semantics).
    header = HeaderMatch(name=source.get("header_name", "").lower(), string=string)
    return Rule(kind="header", header=header)


# --- evaluation ---------------------------------------------------------------------------------

Check = Callable[["Stream"], bool]


def _compile(rule: Rule) -> Check:
    """A rule as a function of the request, built once at config time."""
    kind = rule.kind
    if kind == "any":
        return lambda s: True
    if kind == "header":
        assert rule.header is not None
        return HeaderMatcher(rule.header).match
    if kind == "url_path":
        assert rule.string is not None
        path_matcher = StringMatcher(rule.string)
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

    def decide(self, s: Stream) -> tuple[bool, str]:
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

    def decode_headers(self, s: Stream, route: CompiledRoute | None) -> Outcome:
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
