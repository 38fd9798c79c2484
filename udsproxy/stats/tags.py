"""Envoy's default tag extraction: dotted stat names to Prometheus names and labels.

A port of Envoy's default tag extractors (``source/common/config/well_known_names.cc``, the
RE2/tokenized version used by current releases) and of how ``TagProducerImpl::produceTags``
applies them (``source/common/stats/tag_producer_impl.cc``, ``tag_extractor_impl.cc``):

* every extractor runs against the *original* name; each match adds one tag (name, value) and
  marks a character range to remove; all marked ranges are removed at the end;
* regex extractors take capture group 1 as the text to remove and group 2 (or group 1 when group
  2 is empty) as the tag value; a ``substr`` must occur in the name for the regex to be tried;
* tokenized extractors split on '.', ``$`` captures one token, ``*`` matches one token and
  ``**`` matches any number of them (at least one when it ends the pattern);
* order: first the extractors without a literal prefix token (regexes, then tokenized), then the
  ones whose prefix token equals the name's first token, in definition order (regexes first);
  the tags keep that order, which is the label order of Envoy's Prometheus output;
* a tag name with two extractors (``envoy.http_conn_manager_prefix``) is extracted once.

The Prometheus name is ``envoy_`` + the tag-extracted name with every character outside
``[a-zA-Z0-9_]`` replaced by '_'; label names get the same replacement ("envoy.cluster_name" ->
"envoy_cluster_name").

Left out, as no stat of this proxy can carry them and their tag names could not be checked
against Envoy's header: ext_authz, listener_local_ratelimit and dns_filter prefixes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["extract_tags", "prometheus_name", "sanitize_stats_name", "tag_extracted_name"]

# The pattern pieces Envoy substitutes into its regexes (expandRegex in well_known_names.cc).
_ADDRESS = r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)"
_CIPHER = r"[\w-]+"
_TLS_VERSION = r"TLSv\d\.\d"
_TAG_VALUE = r"[^\.]+"
_ROUTE_CONFIG_NAME = r"[\w.-]+"  # RE2 "[\w-\.]": word chars, '-' and '.'
_LISTENER_OR_CLUSTER_WITH_NAME = r"(?:listener|cluster)\..*?"


def _expand(regex: str) -> str:
    return (
        regex.replace("<ADDRESS>", _ADDRESS)
        .replace("<CIPHER>", _CIPHER)
        .replace("<TLS_VERSION>", _TLS_VERSION)
        .replace("<TAG_VALUE>", _TAG_VALUE)
        .replace("<ROUTE_CONFIG_NAME>", _ROUTE_CONFIG_NAME)
        .replace("<LISTENER_OR_CLUSTER_WITH_NAME>", _LISTENER_OR_CLUSTER_WITH_NAME)
    )


# (tag name, regex, substr, negative value): addRe2(...) calls, in Envoy's order.
_REGEXES: tuple[tuple[str, str, str, str], ...] = (
    ("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_", ""),
    ("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_", ""),
    (
        "envoy.dynamo_partition_id",
        r"^http\.<TAG_VALUE>\.dynamodb\.table\.<TAG_VALUE>\.capacity\.<TAG_VALUE>"
        r"(\.__partition_id=(\w{7}))$",
        ".dynamodb.table.",
        "",
    ),
    (
        "envoy.dynamo_operation",
        r"^http\.<TAG_VALUE>\.dynamodb.(?:operation|table\.<TAG_VALUE>\.capacity)"
        r"(\.(<TAG_VALUE>))(?:\.|$)",
        ".dynamodb.",
        "",
    ),
    (
        "envoy.dynamo_table",
        r"^http\.<TAG_VALUE>\.dynamodb.(?:table|error)\.((<TAG_VALUE>)\.)",
        ".dynamodb.",
        "",
    ),
    ("envoy.ssl_cipher", r"^listener\..*?\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers.", ""),
    (
        "envoy.ssl_curve",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.curves(\.(<CIPHER>))$",
        ".ssl.curves.",
        "",
    ),
    (
        "envoy.ssl_sigalg",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.sigalgs(\.(<CIPHER>))$",
        ".ssl.sigalgs.",
        "",
    ),
    (
        "envoy.ssl_version",
        r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.versions(\.(<TLS_VERSION>))$",
        ".ssl.versions.",
        "",
    ),
    ("cipher_suite", r"^cluster\.<TAG_VALUE>\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers.", ""),
    ("envoy.http_conn_manager_prefix", r"^listener\..*?\.http\.((<TAG_VALUE>)\.)", ".http.", ""),
    (
        "envoy.worker_id",
        r"^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)\.|server\.|listener_manager\.)worker_((\d+)\.)",
        "",
        "",
    ),
    ("envoy.listener_address", r"^listener\.((<ADDRESS>|<TAG_VALUE>)\.)", "", "admin"),
    (
        "envoy.rds_route_config",
        r"^http\.<TAG_VALUE>\.rds\.((<ROUTE_CONFIG_NAME>)\.)\w+?$",
        ".rds.",
        "",
    ),
)

# (tag name, token pattern): addTokenized(...) calls, in Envoy's order.
_TOKENIZED: tuple[tuple[str, str], ...] = (
    ("envoy.mongo_callsite", "mongo.*.collection.*.callsite.$.query.**"),
    ("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
    ("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
    ("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
    ("envoy.http_user_agent", "http.*.user_agent.$.**"),
    ("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    ("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    ("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
    ("envoy.tcp_prefix", "tcp.$.**"),
    ("envoy.udp_prefix", "udp.$.**"),
    ("envoy.clientssl_prefix", "auth.clientssl.$.**"),
    ("envoy.ratelimit_prefix", "ratelimit.$.**"),
    ("envoy.cluster_name", "cluster.$.**"),
    ("envoy.http_conn_manager_prefix", "http.$.**"),
    ("envoy.virtual_host", "vhost.$.**"),
    ("envoy.mongo_prefix", "mongo.$.**"),
    ("envoy.route", "vhost.*.route.$.**"),
    ("envoy.thrift_prefix", "thrift.$.**"),
    ("envoy.redis_prefix", "redis.$.**"),
    ("envoy.local_http_ratelimit_prefix", "$.http_local_rate_limit.**"),
    ("envoy.local_network_ratelimit_prefix", "local_rate_limit.$.**"),
)

_INVALID = re.compile(r"[^a-zA-Z0-9_]")

# (tag value, start, end) of the characters to remove
_Match = tuple[str, int, int]


def _regex_prefix(regex: str) -> str:
    """TagExtractorImplBase::extractRegexPrefix: "^word\\." or "^word(?=\\." -> "word"."""
    if not regex.startswith("^"):
        return ""
    for i in range(1, len(regex)):
        ch = regex[i]
        if not (ch.isascii() and (ch.isalnum() or ch == "_")):
            rest = regex[i:]
            last = i == len(regex) - 1
            if i > 1 and (
                (not last and (rest.startswith("\\.") or rest.startswith("(?=\\.)")))
                or (last and ch == "$")
            ):
                return regex[1:i]
            return ""
    return ""


@dataclass(frozen=True, slots=True)
class _RegexExtractor:
    tag: str
    regex: re.Pattern[str]
    substr: str
    negative: str

    def match(self, name: str, tokens: list[str]) -> _Match | None:
        if self.substr and self.substr not in name:
            return None
        m = self.regex.search(name)
        if m is None or not m.group(1):
            return None
        value = m.group(2) or m.group(1)
        if self.negative and value == self.negative:
            return None
        return value, m.start(1), m.end(1)


@dataclass(frozen=True, slots=True)
class _TokenExtractor:
    tag: str
    pattern: tuple[str, ...]
    match_index: int

    def match(self, name: str, tokens: list[str]) -> _Match | None:
        ok, start, index = self._search(tokens, 0, 0, 0)
        if not ok or index < 0:
            return None
        value = tokens[index]
        end = start + len(value)
        if index < len(tokens) - 1:
            end += 1  # remove the dot leading to the next token: "ab." or "cd."
        elif start > 0:
            start -= 1  # remove the dot before the last token: ".ef"
        return value, start, end

    def _search(self, tokens: list[str], i: int, p: int, char: int) -> tuple[bool, int, int]:
        """TagExtractorTokensImpl::searchTags from token i and pattern token p (char: offset of
        token i): (matched, start char of the "$" token, its index), -1 when not seen here."""
        pattern = self.pattern
        start = index = -1
        while i < len(tokens) and p < len(pattern):
            if p == self.match_index:
                start, index = char, i
            else:
                expected = pattern[p]
                if expected == "**":
                    if p == len(pattern) - 1:
                        return True, start, index
                    # the rest of the pattern must match from some later token on
                    for j in range(i, len(tokens)):
                        ok, sub_start, sub_index = self._search(tokens, j, p + 1, char)
                        if ok and index >= 0:
                            return True, start, index
                        if ok:
                            return True, sub_start, sub_index
                        char += len(tokens[j]) + 1
                    return False, -1, -1
                if expected not in ("*", tokens[i]):
                    return False, -1, -1
            char += len(tokens[i]) + 1
            i += 1
            p += 1
        return p == len(pattern) and i == len(tokens), start, index


_Extractor = _RegexExtractor | _TokenExtractor


def _build() -> tuple[tuple[_Extractor, ...], dict[str, tuple[_Extractor, ...]], frozenset[str]]:
    extractors: list[tuple[str, _Extractor]] = []
    for tag, regex, substr, negative in _REGEXES:
        source = _expand(regex)
        compiled = re.compile(source, re.ASCII)
        extractors.append((_regex_prefix(source), _RegexExtractor(tag, compiled, substr, negative)))
    for tag, tokens in _TOKENIZED:
        pattern = tuple(tokens.split("."))
        first = pattern[0]
        prefix = "" if first in ("$", "*", "**") else first
        extractors.append((prefix, _TokenExtractor(tag, pattern, pattern.index("$"))))
    without_prefix = tuple(e for prefix, e in extractors if not prefix)
    by_prefix: dict[str, list[_Extractor]] = {}
    for prefix, e in extractors:
        if prefix:
            by_prefix.setdefault(prefix, []).append(e)
    tags = [e.tag for _, e in extractors]
    duplicated = {tag for tag in tags if tags.count(tag) > 1}
    return without_prefix, {k: tuple(v) for k, v in by_prefix.items()}, frozenset(duplicated)


_WITHOUT_PREFIX, _BY_PREFIX, _DUPLICATED = _build()


def _remove(name: str, ranges: list[tuple[int, int]]) -> str:
    """StringUtil::removeCharacters with the union of the ranges."""
    if not ranges:
        return name
    out: list[str] = []
    pos = 0
    for start, end in sorted(ranges):
        if start > pos:
            out.append(name[pos:start])
        pos = max(pos, end)
    out.append(name[pos:])
    return "".join(out)


@functools.lru_cache(maxsize=65536)
def _produce_tags(name: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """TagProducerImpl::produceTags: (tag-extracted dotted name, ((envoy tag, value), ...))."""
    dot = name.find(".")
    extractors = _WITHOUT_PREFIX
    if dot >= 0:
        extractors = extractors + _BY_PREFIX.get(name[:dot], ())
    tokens = name.split(".")
    tags: list[tuple[str, str]] = []
    ranges: list[tuple[int, int]] = []
    done: set[str] = set()
    for extractor in extractors:
        tag = extractor.tag
        if tag in done:
            continue
        found = extractor.match(name, tokens)
        if found is None:
            continue
        value, start, end = found
        tags.append((tag, value))
        ranges.append((start, end))
        if tag in _DUPLICATED:
            done.add(tag)
    return _remove(name, ranges), tuple(tags)


def tag_extracted_name(name: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Envoy's tag-extracted name and its tags with Envoy's tag names, in extraction order:
    "cluster.hugo.upstream_rq_503" -> ("cluster.upstream_rq",
    (("envoy.response_code", "503"), ("envoy.cluster_name", "hugo")))."""
    return _produce_tags(name)


def prometheus_name(name: str) -> str:
    """PrometheusStatsFormatter::sanitizeName (without the namespace prefix)."""
    return _INVALID.sub("_", name)


@functools.lru_cache(maxsize=65536)
def _prometheus(name: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    extracted, tags = _produce_tags(name)
    labels = tuple((prometheus_name(tag), value) for tag, value in tags)
    return "envoy_" + prometheus_name(extracted), labels


def extract_tags(name: str) -> tuple[str, list[tuple[str, str]]]:
    """The Prometheus metric name and labels (in Envoy's order) of a dotted stat name:
    "cluster.hugo.upstream_rq_503" ->
    ("envoy_cluster_upstream_rq", [("envoy_response_code", "503"), ("envoy_cluster_name", "hugo")])
    """
    stem, labels = _prometheus(name)
    return stem, list(labels)


def sanitize_stats_name(name: str) -> str:
    """Stats::Utility::sanitizeStatsName, which Envoy applies to scope names such as a listener's
    address: one leading and one trailing '.' dropped, "://", ":/" and ":" each to '_', NUL to
    '_'. "0.0.0.0:10000" -> "0.0.0.0_10000"; "[::]:10000" -> "[__]_10000"; a pipe keeps its path
    ("/dev/shm/edge.sock"), an abstract socket its "@name"."""
    name = name.removesuffix(".").removeprefix(".")
    return name.replace("://", "_").replace(":/", "_").replace(":", "_").replace("\0", "_")
