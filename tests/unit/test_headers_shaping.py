"""Route header mutations, header matchers and local_reply_config: pure pieces, no sockets."""

from __future__ import annotations

import pytest

from udsproxy.codec import http1
from udsproxy.config import schema
from udsproxy.flags import ResponseFlag
from udsproxy.headermatch import HeaderMatch
from udsproxy.headers import check_name, check_option, compile_mutations
from udsproxy.localreply import LocalReplyRewriter
from udsproxy.router.routes import RouteTable
from udsproxy.streaminfo import Peer, StreamInfo


def opt(key: str, value: str, action: str = "APPEND_IF_EXISTS_OR_ADD", keep: bool = False):
    return schema.HeaderValueOption(
        key=key, value=value, append_action=action, keep_empty_value=keep
    )


def info(headers: list[tuple[bytes, bytes]] | None = None) -> StreamInfo:
    i = StreamInfo(1_700_000_000.25, 0.0)
    i.method, i.path, i.authority = b"GET", b"/p?q=1", b"example.com"
    i.request_headers = headers if headers is not None else []
    i.downstream_remote = Peer("192.0.2.7", 4242)
    return i


def apply(levels, headers, **kw):
    m = compile_mutations(levels, **kw)
    assert m is not None
    i = info(headers)
    m.apply(headers, i)
    return headers


def test_nothing_configured_compiles_to_none():
    assert compile_mutations([((), ()), ((), ()), ((), ())]) is None


def test_plain_appends_are_precomputed_bytes():
    m = compile_mutations([((opt("x-a", "1"),), ()), ((opt("x-b", "2%%"),), ())])
    assert m is not None and m.plain == ((b"x-a", b"1"), (b"x-b", b"2%"))
    headers = [(b"x-a", b"0")]
    m.apply(headers, info(headers))
    assert headers == [(b"x-a", b"0"), (b"x-a", b"1"), (b"x-b", b"2%")]


def test_default_order_least_specific_wins_an_overwrite():
    route = ((opt("x-who", "route", "OVERWRITE_IF_EXISTS_OR_ADD"),), ())
    vhost = ((opt("x-who", "vhost", "OVERWRITE_IF_EXISTS_OR_ADD"),), ())
    config = ((opt("x-who", "config", "OVERWRITE_IF_EXISTS_OR_ADD"),), ())
    assert apply([route, vhost, config], []) == [(b"x-who", b"config")]
    assert apply([route, vhost, config], [], most_specific_wins=True) == [(b"x-who", b"route")]


def test_appends_follow_the_evaluation_order():
    levels = [((opt("x-l", "route"),), ()), ((opt("x-l", "vhost"),), ()), ((opt("x-l", "rc"),), ())]
    assert [v for _, v in apply(levels, [])] == [b"route", b"vhost", b"rc"]
    assert [v for _, v in apply(levels, [], most_specific_wins=True)] == [b"rc", b"vhost", b"route"]


def test_append_actions():
    headers = [(b"x-have", b"old"), (b"x-have", b"older")]
    adds = (
        opt("x-have", "appended"),
        opt("x-have", "absent-only", "ADD_IF_ABSENT"),
        opt("x-new", "absent-only", "ADD_IF_ABSENT"),
        opt("x-none", "ow", "OVERWRITE_IF_EXISTS"),
        opt("x-over", "set", "OVERWRITE_IF_EXISTS_OR_ADD"),
    )
    assert apply([(adds, ())], headers) == [
        (b"x-have", b"old"),
        (b"x-have", b"older"),
        (b"x-over", b"set"),
        (b"x-have", b"appended"),
        (b"x-new", b"absent-only"),
    ]
    headers = [(b"x-have", b"old"), (b"x-keep", b"k"), (b"x-have", b"older")]
    ow = (opt("x-have", "new", "OVERWRITE_IF_EXISTS"),)
    assert apply([(ow, ())], headers) == [(b"x-keep", b"k"), (b"x-have", b"new")]


def test_removal_happens_before_additions_of_the_same_level():
    headers = [(b"x-gone", b"1"), (b"x-stay", b"2")]
    level = ((opt("x-gone", "again", "ADD_IF_ABSENT"),), ("X-Gone",))
    assert apply([level], headers) == [(b"x-stay", b"2"), (b"x-gone", b"again")]


def test_formatted_values_are_rendered_per_request():
    headers = [(b"x-in", b"v1")]
    adds = (
        opt("x-peer", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
        opt("x-copy", "in=%REQ(x-in)% path=%REQ(:PATH)%"),
        opt("x-start", "%START_TIME(%s)%"),
        opt("x-missing", "%REQ(x-absent)%"),  # renders empty: dropped
        opt("x-kept", "%REQ(x-absent)%", keep=True),  # kept empty
    )
    out = dict(apply([(adds, ())], headers))
    assert out[b"x-peer"] == b"192.0.2.7"
    assert out[b"x-copy"] == b"in=v1 path=/p?q=1"
    assert out[b"x-start"] == b"1700000000"
    assert b"x-missing" not in out
    assert out[b"x-kept"] == b""


def test_values_are_formatted_against_the_headers_before_this_levels_additions():
    adds = (opt("x-a", "first"), opt("x-b", "%REQ(x-a)%"))
    assert dict(apply([(adds, ())], [])) == {b"x-a": b"first"}  # x-b rendered empty


def test_checks_refuse_what_cannot_be_set():
    assert check_name("host") == ":-prefixed or host headers may not be modified"
    assert check_name(":path", removing=True) == ":-prefixed or host headers may not be removed"
    assert "not supported by udsproxy" in (check_name("Content-Length") or "")
    assert check_option(opt("x-a", "%REQ(x)%"), request=True) is None
    problem = check_option(opt("x-a", "%RESPONSE_CODE%"), request=True) or ""
    assert "%RESPONSE_CODE%" in problem and "not supported by udsproxy" in problem
    assert check_option(opt("x-a", "%RESPONSE_CODE%"), request=False) is None
    assert "unknown command operator %NOPE%" in (
        check_option(opt("x", "%NOPE%"), request=False) or ""
    )
    assert "CR, LF" in (check_option(opt("x", "a\r\nb"), request=False) or "")


@pytest.mark.parametrize(
    ("matcher", "expected"),
    [
        (schema.HeaderMatcher(name=":method", exact="GET"), True),
        (schema.HeaderMatcher(name=":method", exact="get"), False),
        (schema.HeaderMatcher(name=":method", exact="get", ignore_case=True), True),
        (schema.HeaderMatcher(name="x-v", prefix="ab"), True),
        (schema.HeaderMatcher(name="x-v", suffix="d,e"), True),  # repeated: joined with ","
        (schema.HeaderMatcher(name="x-v", contains="cd"), True),
        (schema.HeaderMatcher(name="x-v", safe_regex="ab.*"), True),
        (schema.HeaderMatcher(name="x-n", range=(10, 20)), True),
        (schema.HeaderMatcher(name="x-n", range=(0, 10)), False),
        (schema.HeaderMatcher(name="x-n", range=(0, 10), invert_match=True), True),
        (schema.HeaderMatcher(name="x-v"), True),
        (schema.HeaderMatcher(name="x-absent"), False),
        (schema.HeaderMatcher(name="x-absent", present=False), True),
        (schema.HeaderMatcher(name="x-absent", exact="", invert_match=True), False),
        (schema.HeaderMatcher(name="x-absent", exact="", treat_missing_header_as_empty=True), True),
    ],
)
def test_header_matcher(matcher: schema.HeaderMatcher, expected: bool):
    i = info([(b"x-v", b"abcd"), (b"x-n", b"15"), (b"x-v", b"e")])
    assert HeaderMatch(matcher).match(i) is expected


def _read(source: schema.DataSource) -> bytes:
    return source.value.encode()


def _reply(config: schema.LocalReplyConfig, code: int, body: bytes, flags: int = 0):
    i = info([(b"x-client", b"yes")])
    i.response_code, i.response_flags = code, flags
    headers: list[tuple[bytes, bytes]] = []
    i.response_headers = headers
    out, content_type = LocalReplyRewriter(config, _read).rewrite(i, headers, body)
    return i.response_code, out, content_type, headers


def test_local_reply_first_matching_mapper_rewrites():
    status = schema.AccessLogFilter(kind="status_code", op="EQ", value=503)
    flagged = schema.AccessLogFilter(kind="response_flag", flags=("UF", "UH"))
    config = schema.LocalReplyConfig(
        mappers=(
            schema.ResponseMapper(
                filter=schema.AccessLogFilter(kind="and", filters=(status, flagged)),
                status_code=502,
                body=schema.DataSource(kind="inline_string", value="mapped"),
                headers_to_add=(opt("x-mapped", "%RESPONSE_CODE%"),),
            ),
            schema.ResponseMapper(filter=status, status_code=500),  # not reached
        ),
        body_format=schema.SubstitutionFormat(
            text_format="[%LOCAL_REPLY_BODY%] %RESPONSE_CODE% %REQ(x-client)%"
        ),
    )
    code, body, ctype, headers = _reply(config, 503, b"no healthy upstream", ResponseFlag.UH)
    # headers are added before the status changes (Envoy's order)
    assert (code, body, ctype, headers) == (
        502, b"[mapped] 502 yes", b"text/plain", [(b"x-mapped", b"503")]
    )  # fmt: skip
    code, body, _, _ = _reply(config, 503, b"x")  # no flag: the second mapper
    assert (code, body) == (500, b"[x] 500 yes")
    code, body, _, _ = _reply(config, 404, b"")  # no mapper: the body format still applies
    assert (code, body) == (404, b"[] 404 yes")


def test_local_reply_format_override_and_json():
    config = schema.LocalReplyConfig(
        mappers=(
            schema.ResponseMapper(
                filter=schema.AccessLogFilter(
                    kind="header", header=schema.HeaderMatcher(name=":method", exact="GET")
                ),
                body_format_override=schema.SubstitutionFormat(
                    text_format="<h1>%RESPONSE_CODE%</h1>", content_type="text/html"
                ),
            ),
        ),
        body_format=schema.SubstitutionFormat(
            json_format={"code": "%RESPONSE_CODE%", "message": "%LOCAL_REPLY_BODY%"}
        ),
    )
    assert _reply(config, 404, b"")[1:3] == (b"<h1>404</h1>", b"text/html")
    i = info()
    i.method, i.response_code = b"POST", 503
    body, ctype = LocalReplyRewriter(config, _read).rewrite(i, [], b"no healthy upstream")
    assert (body, ctype) == (
        b'{"code":503,"message":"no healthy upstream"}\n', b"application/json"
    )  # fmt: skip


def test_router_compiles_shaping_only_where_configured():
    vhost = schema.VirtualHost(
        name="vh",
        domains=("*",),
        routes=(
            schema.Route(
                match=schema.RouteMatch(prefix="/plain"), route=schema.RouteAction(cluster="c")
            ),
            schema.Route(
                match=schema.RouteMatch(prefix="/direct"),
                direct_response=schema.DirectResponse(
                    status=403, body=schema.DataSource(kind="inline_string", value="denied\n")
                ),
            ),
            schema.Route(
                match=schema.RouteMatch(prefix="/host"),
                route=schema.RouteAction(cluster="c", host_rewrite_literal="up.example"),
            ),
        ),
    )
    bare = RouteTable(schema.RouteConfiguration(virtual_hosts=(vhost,)))
    plain = bare.match(b"x", b"/plain")
    assert plain is not None
    assert plain.request_shaping is None and plain.response_mutations is None
    assert plain.direct_response is None
    direct = bare.match(b"x", b"/direct")
    assert direct is not None and direct.direct_response is not None
    reply = direct.direct_response
    assert (reply.code, reply.body, reply.details, reply.flag) == (
        403,
        b"denied\n",
        "direct_response",
        0,
    )
    host = bare.match(b"x", b"/host")
    assert host is not None and host.request_shaping is not None
    assert host.request_shaping.host_literal == b"up.example"
    # a route configuration level applies to every route
    shaped = RouteTable(
        schema.RouteConfiguration(
            virtual_hosts=(vhost,), response_headers_to_add=(opt("x-rc", "1"),)
        )
    )
    plain = shaped.match(b"x", b"/plain")
    assert plain is not None and plain.response_mutations is not None
    assert plain.request_shaping is None


def test_router_replies_carry_route_response_headers_only_from_the_router():
    assert http1.NO_HEALTHY_UPSTREAM.router and http1.CONNECT_FAILURE.router
    assert http1.UPSTREAM_TIMEOUT.router and http1.NO_CLUSTER.router
    assert not http1.NO_ROUTE.router and not http1.UPGRADE_FAILED.router
    assert not http1.STREAM_IDLE_TIMEOUT.router and not http1.BAD_REQUEST.router
