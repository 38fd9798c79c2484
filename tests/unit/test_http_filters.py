"""The HTTP filters' decision logic, without sockets: a request is a small stand-in object with
the attributes the filters read."""

from __future__ import annotations

import gzip
import os
import zlib
from types import SimpleNamespace
from typing import Any

import pytest

from udsproxy.config import convert_filters as cf
from udsproxy.config import filter_schema as fs
from udsproxy.config.convert_matchers import header_matcher, string_matcher
from udsproxy.config.filter_schema import (
    BrotliConfig,
    Fraction,
    GzipConfig,
    GzipDecompressorConfig,
)
from udsproxy.config.schema import SanMatcher
from udsproxy.filters import compressor, cors, csrf, fault, rbac
from udsproxy.filters.base import FilterChain, Hold, LocalAnswer, sample
from udsproxy.filters.codecs import BrotliCompressor, GzipCompressor, GzipDecompressor
from udsproxy.flags import ResponseFlag
from udsproxy.headermatch import HeaderMatch, StringMatch
from udsproxy.streaminfo import Peer


class Conv:
    """The converter's reporting interface, collecting what it says."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append((path, message))

    def refuse(self, path: str, what: str = "", note: str = "") -> None:
        self.errors.append((path, f"{what} not supported by udsproxy ({note})"))

    def only(self, node: Any, path: str, allowed: Any) -> None:
        for key in node:
            if key not in allowed and key != "@type":
                self.refuse(f"{path}.{key}")


class Stats:
    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, int] = {}

    def counter_set(self, *names: str) -> dict[str, int]:
        for n in names:
            self.counters.setdefault(n, 0)
        return self.counters

    def gauge_set(self, *names: str) -> dict[str, int]:
        for n in names:
            self.gauges.setdefault(n, 0)
        return self.gauges


class Runtime:
    def __init__(self, **values: int) -> None:
        self.values = {k.replace("__", "."): v for k, v in values.items()}

    def integer(self, key: str, default: int) -> int:
        return self.values.get(key, default)


def request(
    method: bytes = b"GET",
    path: bytes = b"/",
    authority: bytes = b"example.com",
    headers: list[tuple[bytes, bytes]] | None = None,
    peer: str = "10.1.2.3",
) -> Any:
    hs = headers or []
    return SimpleNamespace(
        method=method,
        path=path,
        authority=authority,
        headers=hs,
        request_headers=hs,  # the same list, as a Stream's after its connection manager edits
        ctx=SimpleNamespace(scheme=b"http"),
        downstream_remote=Peer(peer, 1234),
        downstream_direct_remote=Peer(peer, 1234),
        downstream_local=Peer("127.0.0.1", 10000),
        response_flags=0,
        resp_coder=None,
        is_head=False,
        upgrade=None,
        upstream_chunked=False,
        filter_state=None,
    )


def route(filter_configs: dict[str, Any], cluster: str = "c") -> Any:
    return SimpleNamespace(filter_configs=filter_configs, cluster=cluster)


# --- matchers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "value", "expected"),
    [
        ({"exact": "abc"}, b"abc", True),
        ({"exact": "abc"}, b"ABC", False),
        ({"exact": "abc", "ignore_case": True}, b"ABC", True),
        ({"prefix": "/a"}, b"/ab", True),
        ({"suffix": ".io"}, b"x.io", True),
        ({"contains": "mid"}, b"amidb", True),
        ({"safe_regex": {"regex": "a+b"}}, b"aab", True),
        ({"safe_regex": {"regex": "a+b"}}, b"aabc", False),  # a full match, as RE2's
    ],
)
def test_string_matcher(node: dict[str, Any], value: bytes, expected: bool) -> None:
    m = string_matcher(Conv(), node, "m")
    assert m is not None
    assert StringMatch(m).match(value) is expected


def test_string_matcher_refuses_custom_and_bad_regex() -> None:
    conv = Conv()
    assert string_matcher(conv, {"safe_regex": {"regex": "("}}, "m") is None
    string_matcher(conv, {"custom": {}}, "m")
    assert [p for p, _ in conv.errors] == ["m.safe_regex.regex", "m.custom"]


def test_header_matcher() -> None:
    s = request(headers=[(b"x-a", b"1"), (b"x-a", b"2")], path=b"/p?q")

    def match(node: dict[str, Any]) -> bool:
        m = header_matcher(Conv(), node, "h")
        assert m is not None
        return HeaderMatch(m).match(s)

    assert match({"name": "x-a", "string_match": {"exact": "1,2"}})  # repeated: joined
    assert match({"name": "x-a", "present_match": True})
    assert match({"name": "x-b", "present_match": False})
    assert not match({"name": "x-b", "string_match": {"exact": ""}})
    assert match(
        {"name": "x-b", "string_match": {"exact": ""}, "treat_missing_header_as_empty": True}
    )
    assert match({"name": ":path", "prefix_match": "/p"})
    assert match({"name": ":method", "exact_match": "GET"})
    assert match({"name": "x-a", "string_match": {"exact": "9"}, "invert_match": True})
    assert not match({"name": "x-a", "range_match": {"start": 0, "end": 5}})  # "1,2" not an int


def test_one_matcher_semantics_for_local_replies_and_filters() -> None:
    # Envoy: ignore_case has no effect on safe_regex; :scheme is the sanitized x-forwarded-proto
    conv = Conv()
    folded_regex = {"safe_regex": {"regex": "ab+"}, "ignore_case": True}
    regex = header_matcher(conv, {"name": "x-a", "string_match": folded_regex}, "h")
    scheme = header_matcher(conv, {"name": ":scheme", "exact_match": "https"}, "h")
    empty = header_matcher(conv, {"name": "x-a", "string_match": {"ignore_case": True}}, "h")
    assert regex is not None and scheme is not None and empty is not None and not conv.errors
    s = request(headers=[(b"x-a", b"ABB"), (b"x-forwarded-proto", b"https")])
    assert not HeaderMatch(regex).match(s)
    assert HeaderMatch(regex).match(request(headers=[(b"x-a", b"abb")]))
    assert HeaderMatch(scheme).match(s)  # the listener is plain http (ctx.scheme)
    assert not HeaderMatch(empty).match(s)  # exact "" (the proto default), not a presence match
    assert HeaderMatch(empty).match(request(headers=[(b"x-a", b"")]))
    assert StringMatch(SanMatcher(san_type="DNS", prefix="API.", ignore_case=True)).match(b"api.x")


def test_fraction() -> None:
    f = cf.parse_fraction(
        Conv(), {"default_value": {"numerator": 0}, "runtime_key": "k"}, "f", 100, runtime=True
    )
    assert f == Fraction(numerator=0, runtime_key="k")
    assert not sample(f, Runtime())
    assert sample(f, Runtime(k=100))
    assert sample(cf.parse_fraction(Conv(), None, "f", 100), Runtime())
    million = cf.parse_fraction(Conv(), {"numerator": 5, "denominator": "MILLION"}, "f", 0)
    assert million.denominator == 1_000_000


# --- cors ------------------------------------------------------------------------------------


def cors_filter(*policies: dict[str, Any]) -> tuple[cors.CorsFilter, Any, Stats]:
    stats = Stats()
    f = cors.CorsFilter("envoy.filters.http.cors", Runtime(), stats)  # type: ignore[arg-type]
    parsed = tuple(cf.parse_cors_policy(Conv(), p, "p") for p in policies)
    return f, route({f.name: f.compile_route(parsed)}), stats


def test_cors_preflight_and_response_headers() -> None:
    f, r, stats = cors_filter(
        {
            "allow_origin_string_match": [{"prefix": "https://"}],
            "allow_methods": "GET",
            "allow_credentials": True,
            "max_age": "60",
            "expose_headers": "x-e",
        }
    )
    pre = request(
        b"OPTIONS", headers=[(b"origin", b"https://a"), (b"access-control-request-method", b"GET")]
    )
    out = f.decode_headers(pre, r)
    assert isinstance(out, LocalAnswer)
    assert out.reply.code == 200 and out.reply.details == "cors_response"
    assert dict(out.headers) == {
        b"access-control-allow-origin": b"https://a",
        b"access-control-allow-credentials": b"true",
        b"access-control-allow-methods": b"GET",
        b"access-control-max-age": b"60",
    }
    s = request(headers=[(b"origin", b"https://a")])
    assert f.decode_headers(s, r) is None
    headers: list[tuple[bytes, bytes]] = []
    assert s.filter_state.encode_headers(request(), 200, headers, 10) == 10
    assert dict(headers) == {
        b"access-control-allow-origin": b"https://a",
        b"access-control-allow-credentials": b"true",
        b"access-control-expose-headers": b"x-e",
    }
    s = request(headers=[(b"origin", b"http://a")])
    assert f.decode_headers(s, r) is None
    assert s.filter_state is None  # nothing to do: no state allocated
    assert stats.counters == {"origin_valid": 2, "origin_invalid": 1}


def test_cors_star_matcher_allows_any_origin_and_route_level_wins() -> None:
    # Envoy: a matcher that matches "*" allows every origin (regex \* in the envoy examples)
    f, r, _ = cors_filter(
        {"filter_enabled": {"default_value": {"numerator": 0}}},
        {"allow_origin_string_match": [{"safe_regex": {"regex": "\\*"}}]},
    )
    s = request(headers=[(b"origin", b"https://x")])
    assert f.decode_headers(s, r) is None
    assert s.filter_state is None  # disabled by the route's filter_enabled 0%
    f, r, _ = cors_filter({}, {"allow_origin_string_match": [{"safe_regex": {"regex": "\\*"}}]})
    f.decode_headers(s, r)
    assert s.filter_state.encoders


def test_cors_shadow_counts_only() -> None:
    f, r, stats = cors_filter(
        {
            "allow_origin_string_match": [{"exact": "https://a"}],
            "filter_enabled": {"default_value": {"numerator": 0}},
            "shadow_enabled": {"default_value": {"numerator": 100}},
        }
    )
    pre = request(
        b"OPTIONS", headers=[(b"origin", b"https://a"), (b"access-control-request-method", b"GET")]
    )
    assert f.decode_headers(pre, r) is None
    assert stats.counters["origin_valid"] == 1


# --- fault -----------------------------------------------------------------------------------


def fault_filter(config: dict[str, Any], runtime: Runtime | None = None) -> tuple[Any, Stats]:
    conv = Conv()
    parsed = cf.parse_fault(conv, config, "f")
    assert not conv.errors, conv.errors
    stats = Stats()
    return fault.FaultFilter("fault", parsed, runtime or Runtime(), stats), stats  # type: ignore[arg-type]


def test_fault_abort_and_delay() -> None:
    f, stats = fault_filter({"abort": {"http_status": 503, "percentage": {"numerator": 100}}})
    s = request()
    out = f.decode_headers(s, None)
    st = s.filter_state
    assert isinstance(out, LocalAnswer)
    assert (out.reply.code, out.reply.flag, out.reply.details) == (
        503,
        ResponseFlag.FI,
        "fault_filter_abort",
    )
    assert out.reply.body == b"fault filter abort"
    assert stats.counters["aborts_injected"] == 1 and stats.gauges["active_faults"] == 1
    st.close()
    assert stats.gauges["active_faults"] == 0
    f, stats = fault_filter(
        {
            "delay": {"fixed_delay": 1.5, "percentage": {"numerator": 100}},
            "abort": {"http_status": 500, "percentage": {"numerator": 100}},
        }
    )
    s = request()
    out = f.decode_headers(s, None)
    st = s.filter_state
    assert isinstance(out, Hold) and out.seconds == 1.5
    assert s.response_flags == ResponseFlag.DI
    after = f.resume(s, st)
    assert isinstance(after, LocalAnswer) and after.reply.code == 500
    assert stats.counters["delays_injected"] == 1


def test_fault_percentages_runtime_and_headers() -> None:
    config = {"abort": {"http_status": 503, "percentage": {"numerator": 0}}}
    f, _ = fault_filter(config)
    assert f.decode_headers(request(), None) is None
    f, _ = fault_filter(
        config, Runtime(fault__http__abort__abort_percent=100, fault__http__abort__http_status=429)
    )
    out = f.decode_headers(request(), None)
    assert isinstance(out, LocalAnswer) and out.reply.code == 429
    f, _ = fault_filter({"abort": {"header_abort": {}, "percentage": {"numerator": 100}}})
    assert f.decode_headers(request(), None) is None  # no header: no fault
    bad = request(headers=[(b"x-envoy-fault-abort-request", b"700")])
    assert f.decode_headers(bad, None) is None  # outside [200, 600)
    capped = request(
        headers=[
            (b"x-envoy-fault-abort-request", b"404"),
            (b"x-envoy-fault-abort-request-percentage", b"0"),
        ]
    )
    assert f.decode_headers(capped, None) is None
    ok = request(headers=[(b"x-envoy-fault-abort-request", b"404")])
    out = f.decode_headers(ok, None)
    assert isinstance(out, LocalAnswer) and out.reply.code == 404


@pytest.mark.parametrize("runtime_status", [0, 199, 600, -1, 1000])
def test_fault_runtime_status_outside_200_600_keeps_the_configured_one(
    runtime_status: int,
) -> None:
    runtime = Runtime(fault__http__abort__http_status=runtime_status)
    f, _ = fault_filter({"abort": {"http_status": 503, "percentage": {"numerator": 100}}}, runtime)
    out = f.decode_headers(request(), None)
    assert isinstance(out, LocalAnswer) and out.reply.code == 503
    f, _ = fault_filter({"abort": {"header_abort": {}, "percentage": {"numerator": 100}}}, runtime)
    out = f.decode_headers(request(headers=[(b"x-envoy-fault-abort-request", b"404")]), None)
    assert isinstance(out, LocalAnswer) and out.reply.code == 404


def test_fault_limits() -> None:
    f, stats = fault_filter(
        {"abort": {"http_status": 503, "percentage": {"numerator": 100}}, "max_active_faults": 1}
    )
    s = request()
    assert f.decode_headers(s, None) is not None
    held = s.filter_state
    assert f.decode_headers(request(), None) is None
    assert stats.counters["faults_overflow"] == 1
    held.close()
    assert f.decode_headers(request(), None) is not None
    f, _ = fault_filter(
        {
            "abort": {"http_status": 503, "percentage": {"numerator": 100}},
            "upstream_cluster": "a",
            "headers": [{"name": "x-fault", "present_match": True}],
        }
    )
    hit = request(headers=[(b"x-fault", b"1")])
    assert f.decode_headers(hit, route({}, "a")) is not None
    assert f.decode_headers(hit, route({}, "b")) is None
    assert f.decode_headers(request(), route({}, "a")) is None


def test_fault_refuses_what_it_does_not_do() -> None:
    conv = Conv()
    cf.parse_fault(conv, {"abort": {"grpc_status": 5}, "response_rate_limit": {}}, "f")
    paths = [p for p, _ in conv.errors]
    assert "f.response_rate_limit" in paths and "f.abort.grpc_status" in paths


# --- compressor -------------------------------------------------------------------------------


ENCS = frozenset({"gzip"})


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("gzip", ("gzip", "header_compressor_used")),
        ("deflate, gzip;q=0.5", ("gzip", "header_compressor_used")),
        ("gzip;q=0,*;q=1", ("", "header_not_valid")),
        ("*;q=0,gzip;q=1", ("gzip", "header_compressor_used")),
        ("*", ("gzip", "header_wildcard")),
        ("identity", ("", "header_identity")),
        ("identity;q=1, gzip;q=0.5", ("", "header_identity")),
        ("br", ("", "header_not_valid")),
        ("gzip;q=x", ("", "header_not_valid")),
    ],
)
def test_choose_encoding(accept: str, expected: tuple[str, str]) -> None:
    assert compressor.choose_encoding(accept, ENCS) == expected


def compressor_filter(**response: Any) -> tuple[compressor.CompressorFilter, Stats]:
    node = {
        "compressor_library": {
            "name": "lib",
            "typed_config": {"@type": fs.GZIP_COMPRESSOR_TYPE, "window_bits": 10},
        },
        "response_direction_config": response,
    }
    conv = Conv()
    config = cf.parse_compressor(conv, node, "c")
    assert config is not None and not conv.errors, conv.errors
    assert config.stat_prefix == "compressor.lib.gzip.response."
    stats = Stats()
    return compressor.CompressorFilter("c", config, Runtime(), stats), stats  # type: ignore[arg-type]


def compress(
    f: Any,
    headers: list[tuple[bytes, bytes]],
    length: int = 100,
    accept: bytes | None = b"gzip",
    code: int = 200,
) -> tuple[Any, int]:
    s = request(headers=[(b"accept-encoding", accept)] if accept else [])
    f.decode_headers(s, None)
    return s, s.filter_state.encode_headers(s, code, headers, length)


def test_compressor_headers() -> None:
    f, stats = compressor_filter()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"etag", b'"abc"'),
        (b"vary", b"Origin"),
    ]
    s, length = compress(f, headers)
    assert length == -1 and s.resp_coder is not None
    assert headers == [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"vary", b"Origin, Accept-Encoding"),
        (b"content-encoding", b"gzip"),
    ]
    assert stats.counters["compressed"] == 1
    body = s.resp_coder.encode(b"x" * 1000) + s.resp_coder.finish()
    assert gzip.decompress(body) == b"x" * 1000
    assert stats.counters["total_uncompressed_bytes"] == 1000


@pytest.mark.parametrize(
    ("headers", "length", "code", "stat"),
    [
        ([(b"content-type", b"text/html")], 29, 200, "content_length_too_small"),
        ([(b"content-type", b"image/png")], 100, 200, None),
        ([(b"content-type", b"text/html"), (b"content-encoding", b"br")], 100, 200, None),
        ([(b"content-type", b"text/html"), (b"cache-control", b"No-Transform")], 100, 200, None),
        ([(b"content-type", b"text/html")], 100, 304, None),
        ([(b"content-type", b"text/html")], -1, 200, None),  # close-delimited
    ],
)
def test_compressor_skips(
    headers: list[tuple[bytes, bytes]], length: int, code: int, stat: str | None
) -> None:
    f, stats = compressor_filter()
    s, out = compress(f, headers, length, code=code)
    assert out == length and s.resp_coder is None
    assert not any(n == b"content-encoding" and v == b"gzip" for n, v in headers)
    if stat:
        assert stats.counters[stat] == 1


def test_compressor_etag_and_accept() -> None:
    f, stats = compressor_filter(disable_on_etag_header=True)
    _, out = compress(f, [(b"etag", b'"x"')])
    assert out == 100 and stats.counters["not_compressed_etag"] == 1
    f, stats = compressor_filter(weaken_etag_on_compress=True)
    headers = [(b"etag", b'"x"')]
    compress(f, headers)
    assert (b"etag", b'W/"x"') in headers
    f, stats = compressor_filter()
    headers = []
    _, out = compress(f, headers, accept=None)
    assert out == 100 and stats.counters["no_accept_header"] == 1
    assert headers == [(b"vary", b"Accept-Encoding")]  # the response could have been compressed


def test_compressor_config_refusals() -> None:
    conv = Conv()
    node = {
        "compressor_library": {"name": "x", "typed_config": {"@type": "zstd.Zstd"}},
        "request_direction_config": {"common_config": {}},
    }
    assert cf.parse_compressor(conv, node, "c") is None
    messages = " ".join(m for _, m in conv.errors)
    assert "request compression" in messages and "only gzip and brotli" in messages


def test_brotli_coder() -> None:
    brotli = pytest.importorskip("brotli")
    stats = Stats().counter_set("total_uncompressed_bytes", "total_compressed_bytes")
    c = BrotliCompressor(BrotliConfig(window_bits=10), stats)
    data = b"hello brotli " * 200
    assert brotli.decompress(c.encode(data[:1000]) + c.encode(data[1000:]) + c.finish()) == data


def test_gzip_coders_round_trip_and_bomb() -> None:
    counters = Stats().counter_set(
        "total_uncompressed_bytes", "total_compressed_bytes", "zlib_data_error"
    )
    plain = os.urandom(20000)
    c = GzipCompressor(GzipConfig(compression_level="BEST_SPEED"), counters)
    packed = c.encode(plain) + c.finish()
    d = GzipDecompressor(GzipDecompressorConfig(chunk_size=1000), counters)
    out = b"".join(_drain(d, packed[i : i + 700]) for i in range(0, len(packed), 700))
    assert out + d.finish() == plain
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    packed = bomb.compress(b"\0" * 10_000_000) + bomb.flush()
    d = GzipDecompressor(GzipDecompressorConfig(), counters)
    out = _drain(d, packed)
    assert len(out) <= len(packed) * 100 and counters["zlib_data_error"] == 1
    assert d.encode(b"more") == b"" and d.finish() == b""


def _drain(coder: GzipDecompressor, data: bytes, limit: int = 1 << 62) -> bytes:
    pieces = [coder.encode(data)]
    while pieces[-1]:
        assert len(pieces[-1]) <= limit
        pieces.append(coder.more())
    return b"".join(pieces)


def test_gzip_decompressor_pieces_stay_under_the_buffer_limit() -> None:
    counters = Stats().counter_set(
        "total_uncompressed_bytes", "total_compressed_bytes", "zlib_data_error"
    )
    plain = bytearray(8 << 20)
    plain[::64] = os.urandom(len(plain) // 64)  # about 25:1, under max_inflate_ratio
    packed = gzip.compress(bytes(plain))
    d = GzipDecompressor(GzipDecompressorConfig(), counters, limit=64 << 10)
    first = d.encode(packed)  # one call: one piece, the rest stays compressed in the coder
    assert 0 < len(first) <= 64 << 10
    assert first + _drain(d, b"", 64 << 10) + d.finish() == plain
    assert counters["zlib_data_error"] == 0
    assert counters["total_uncompressed_bytes"] == len(plain)
    assert counters["total_compressed_bytes"] == len(packed)


# --- rbac -------------------------------------------------------------------------------------


def rbac_filter(node: dict[str, Any]) -> tuple[rbac.RbacFilter, Stats]:
    conv = Conv()
    config = cf.parse_rbac(conv, node, "r")
    assert not conv.errors, conv.errors
    stats = Stats()
    return rbac.RbacFilter("rbac", config, stats), stats  # type: ignore[arg-type]


def test_rbac_allow_rules() -> None:
    f, stats = rbac_filter(
        {
            "rules": {
                "policies": {
                    "admins": {
                        "permissions": [
                            {
                                "and_rules": {
                                    "rules": [
                                        {"url_path": {"path": {"prefix": "/admin"}}},
                                        {
                                            "not_rule": {
                                                "header": {
                                                    "name": ":method",
                                                    "exact_match": "DELETE",
                                                }
                                            }
                                        },
                                    ]
                                }
                            }
                        ],
                        "principals": [
                            {"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}
                        ],
                    },
                    "port": {
                        "permissions": [{"destination_port": 10000}],
                        "principals": [{"header": {"name": "x-key", "exact_match": "k"}}],
                    },
                }
            }
        }
    )
    assert f.decode_headers(request(path=b"/admin/x?y"), None) is None
    out = f.decode_headers(request(b"DELETE", b"/admin/x"), None)
    assert isinstance(out, LocalAnswer)
    assert (out.reply.code, out.reply.body, out.reply.details, out.reply.flag) == (
        403,
        b"RBAC: access denied",
        "rbac_access_denied_matched_policy[none]",
        0,
    )
    assert f.decode_headers(request(path=b"/admin", peer="192.168.0.1"), None)
    assert f.decode_headers(request(headers=[(b"x-key", b"k")], peer="::1"), None) is None
    assert stats.counters["allowed"] == 2 and stats.counters["denied"] == 2


def test_rbac_deny_rules_name_the_policy_and_shadow() -> None:
    f, stats = rbac_filter(
        {
            "rules": {
                "action": "DENY",
                "policies": {
                    "bad": {
                        "permissions": [{"any": True}],
                        "principals": [
                            {"direct_remote_ip": {"address_prefix": "10.1.0.0", "prefix_len": 16}}
                        ],
                    }
                },
            },
            "shadow_rules": {
                "policies": {
                    "none": {
                        "permissions": [{"any": True}],
                        "principals": [{"not_id": {"any": True}}],
                    }
                }
            },
            "shadow_rules_stat_prefix": "s_",
        }
    )
    out = f.decode_headers(request(), None)
    assert isinstance(out, LocalAnswer)
    assert out.reply.details == "rbac_access_denied_matched_policy[bad]"
    assert f.decode_headers(request(peer="10.2.0.1"), None) is None
    assert stats.counters["s_shadow_denied"] == 2


def test_rbac_matcher_form_of_the_envoy_example() -> None:
    header_input = {
        "name": "i",
        "typed_config": {"@type": fs.HEADER_INPUT_TYPE, "header_name": "referer"},
    }
    action = {
        "name": "a",
        "typed_config": {"@type": fs.RBAC_ACTION_TYPE, "name": "illegal-referer", "action": "DENY"},
    }
    f, _ = rbac_filter(
        {
            "matcher": {
                "matcher_list": {
                    "matchers": [
                        {
                            "predicate": {
                                "not_matcher": {
                                    "single_predicate": {
                                        "input": header_input,
                                        "value_match": {
                                            "safe_regex": {
                                                "regex": "https?://(www.)?envoyproxy.io/docs/envoy.*"
                                            }
                                        },
                                    }
                                }
                            },
                            "on_match": {"action": action},
                        }
                    ]
                },
                "on_no_match": {
                    "action": {
                        "name": "a",
                        "typed_config": {"@type": fs.RBAC_ACTION_TYPE, "name": "all-pass"},
                    }
                },
            }
        }
    )
    good = request(headers=[(b"referer", b"https://www.envoyproxy.io/docs/envoy/latest")])
    assert f.decode_headers(good, None) is None
    out = f.decode_headers(request(), None)
    assert isinstance(out, LocalAnswer)
    assert out.reply.details == "rbac_access_denied_matched_policy[illegal-referer]"


def test_rbac_refusals_and_per_route() -> None:
    conv = Conv()
    cf.parse_rbac(
        conv,
        {
            "rules": {
                "action": "LOG",
                "policies": {
                    "p": {
                        "permissions": [{"metadata": {}}],
                        "principals": [{"authenticated": {}}],
                        "condition": {},
                    }
                },
            }
        },
        "r",
    )
    paths = [p for p, _ in conv.errors]
    assert paths == [
        "r.rules.action",
        'r.rules.policies["p"].condition',
        'r.rules.policies["p"].permissions[0].metadata',
        'r.rules.policies["p"].principals[0].authenticated',
    ]
    f, _ = rbac_filter({"rules": {"policies": {}}})  # ALLOW with no policy: everything denied
    assert f.decode_headers(request(), None) is not None
    off = f.compile_route((cf.parse_rbac_per_route(Conv(), {}, "p"),))
    assert f.decode_headers(request(), route({"rbac": off})) is None


# --- csrf -------------------------------------------------------------------------------------


def test_csrf() -> None:
    conv = Conv()
    policy = cf.parse_csrf(
        conv,
        {
            "filter_enabled": {"default_value": {"numerator": 100}},
            "additional_origins": [{"suffix": ".trusted.test"}],
        },
        "c",
    )
    stats = Stats()
    f = csrf.CsrfFilter("csrf", policy, Runtime(), stats)  # type: ignore[arg-type]

    def post(**h: str) -> Any:
        return request(
            b"POST",
            authority=b"site.test:8080",
            headers=[(k.encode(), v.encode()) for k, v in h.items()],
        )

    assert f.decode_headers(post(origin="https://site.test:8080"), None) is None
    assert f.decode_headers(post(referer="http://site.test:8080/page"), None) is None
    assert f.decode_headers(post(origin="https://a.trusted.test"), None) is None
    out = f.decode_headers(post(origin="https://evil.test"), None)
    assert isinstance(out, LocalAnswer) and out.reply.details == "csrf_origin_mismatch"
    assert f.decode_headers(post(), None) is not None
    assert (
        f.decode_headers(request(headers=[(b"origin", b"https://evil.test")]), None) is None
    )  # GET is not checked
    assert stats.counters == {"missing_source_origin": 1, "request_invalid": 1, "request_valid": 3}
    assert csrf.host_and_port(b"https://h:1/x?y") == b"h:1"


def test_a_chain_whose_filters_do_nothing_allocates_no_state() -> None:
    quiet_fault, _ = fault_filter({"abort": {"http_status": 503, "percentage": {"numerator": 0}}})
    quiet_cors, r, _ = cors_filter({})
    chain = FilterChain([quiet_cors, quiet_fault])
    s = request()
    assert chain.decode_headers(s, r) is False
    assert s.filter_state is None  # the stream's encode/close hooks stay one attribute test
    s = request(headers=[(b"origin", b"https://a")])
    loud_cors, r, _ = cors_filter({"allow_origin_string_match": [{"exact": "https://a"}]})
    assert FilterChain([loud_cors, quiet_fault]).decode_headers(s, r) is False
    assert s.filter_state is not None and len(s.filter_state.encoders) == 1
