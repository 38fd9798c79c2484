"""Access-log formats against hand-built StreamInfo records (envoy-parity.md section 1)."""

from __future__ import annotations

import calendar
import json
import socket
import time

import pytest

from udsproxy.accesslog.formatter import (
    DEFAULT_FORMAT,
    FormatError,
    compile_access_log,
    compile_json,
    compile_text,
)
from udsproxy.config.schema import AccessLog
from udsproxy.flags import ResponseFlag
from udsproxy.streaminfo import Peer, StreamInfo

# 2020-04-27T02:49:47.943Z, the article's request
T0 = calendar.timegm((2020, 4, 27, 2, 49, 47)) + 0.943
UUID = "9d490b2d-7c18-4dc7-b815-97f11bfc04d5"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def make_info(
    *,
    start: float = T0,
    duration_ms: float | None = 10.0,
    req: dict[str, str] | None = None,
    resp: dict[str, str] | None = None,
    **fields: object,
) -> StreamInfo:
    info = StreamInfo(start, 5000.0)
    info.end_mono = None if duration_ms is None else 5000.0 + duration_ms / 1000
    info.method, info.path, info.authority = b"GET", b"/", b"blog.example.com"
    info.request_headers = [(k.encode(), v.encode()) for k, v in (req or {}).items()]
    info.response_headers = [(k.encode(), v.encode()) for k, v in (resp or {}).items()]
    info.response_code = 200
    info.upstream_host = "/dev/shm/hugo.sock"
    for name, value in fields.items():
        setattr(info, name, value)
    return info


def render(fmt: str, info: StreamInfo, **kw: bool) -> str:
    """The line as a byte view; the bytes the access log writes must be the same line."""
    f = compile_text(fmt, **kw)
    line = f.format(info)
    if info.end_mono is not None:  # else DURATION reads the clock
        assert f.render(info) == line.encode("latin-1")
    return line


def default(info: StreamInfo) -> str:
    return render(DEFAULT_FORMAT, info)


# -- the default format ----------------------------------------------------------------------


def test_default_format_is_envoys_byte_for_byte() -> None:
    assert DEFAULT_FORMAT == (
        '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
        "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
        '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
        '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
    )


def test_article_log_line() -> None:
    info = make_info(
        path=b"/posts/prometheus-histograms/",
        authority=b"fuckcloudnative.io",
        req={
            "host": "fuckcloudnative.io",
            "user-agent": GOOGLEBOT,
            "accept-encoding": "gzip",
            "x-forwarded-for": "66.249.64.209",
            "x-forwarded-proto": "http",
            "x-request-id": UUID,
        },
        resp={"content-type": "text/html", "x-envoy-upstream-service-time": "9"},
        bytes_sent=169949,
        duration_ms=10.7,  # Envoy truncates to whole milliseconds
    )
    assert default(info) == (
        '[2020-04-27T02:49:47.943Z] "GET /posts/prometheus-histograms/ HTTP/1.1" 200 - 0 169949'
        f' 10 9 "66.249.64.209" "{GOOGLEBOT}" "{UUID}" "fuckcloudnative.io" "/dev/shm/hugo.sock"\n'
    )


T2025 = float(calendar.timegm((2025, 1, 1, 0, 0, 0)))
CURL = {"x-forwarded-for": "203.0.113.7", "user-agent": "curl/8.5.0", "x-request-id": UUID}


@pytest.mark.parametrize(
    ("fields", "req", "resp", "line"),
    [
        pytest.param(
            {"bytes_sent": 5123, "start_mono": 5000.0},
            CURL,
            {"x-envoy-upstream-service-time": "2"},
            '"GET / HTTP/1.1" 200 - 0 5123 3 2 "203.0.113.7" "curl/8.5.0" "{uuid}"'
            ' "blog.example.com" "/dev/shm/hugo.sock"',
            id="200-via-uds",
        ),
        pytest.param(  # nginx down: the host was picked, so it is logged next to UF
            {"response_code": 503, "response_flags": ResponseFlag.UF, "bytes_sent": 91},
            CURL,
            {},
            '"GET / HTTP/1.1" 503 UF 0 91 3 - "203.0.113.7" "curl/8.5.0" "{uuid}"'
            ' "blog.example.com" "/dev/shm/hugo.sock"',
            id="503-UF",
        ),
        pytest.param(
            {
                "response_code": 503,
                "response_flags": ResponseFlag.UH,
                "bytes_sent": 19,
                "path": b"/no-healthy-upstream",
                "authority": b"localhost:8000",
                "upstream_host": None,
            },
            {"user-agent": "curl/8.4.0", "x-request-id": UUID},
            {},
            '"GET /no-healthy-upstream HTTP/1.1" 503 UH 0 19 3 - "-" "curl/8.4.0" "{uuid}"'
            ' "localhost:8000" "-"',
            id="503-UH",
        ),
        pytest.param(
            {"response_code": 404, "response_flags": ResponseFlag.NR, "path": b"/nope"},
            {"user-agent": "curl/8.4.0", "x-request-id": UUID},
            {},
            '"GET /nope HTTP/1.1" 404 NR 0 0 3 - "-" "curl/8.4.0" "{uuid}" "blog.example.com"'
            ' "/dev/shm/hugo.sock"',
            id="404-NR",
        ),
        pytest.param(
            {
                "response_code": 504,
                "response_flags": ResponseFlag.UT,
                "bytes_sent": 24,
                "path": b"/gateway-timeout?delayMs=5000",
                "authority": b"localhost:8000",
                "upstream_host": "172.27.0.2:8080",
            },
            {"user-agent": "curl/8.4.0", "x-request-id": UUID},
            {},
            '"GET /gateway-timeout?delayMs=5000 HTTP/1.1" 504 UT 0 24 3 - "-" "curl/8.4.0"'
            ' "{uuid}" "localhost:8000" "172.27.0.2:8080"',
            id="504-UT",
        ),
        pytest.param(
            {"response_code": 429, "response_flags": ResponseFlag.RL, "bytes_sent": 18},
            {},
            {},
            '"GET / HTTP/1.1" 429 RL 0 18 3 - "-" "-" "-" "blog.example.com" "/dev/shm/hugo.sock"',
            id="429-RL",
        ),
        pytest.param(
            {"response_code": 503, "response_flags": ResponseFlag.UF | ResponseFlag.URX},
            {},
            {},
            '"GET / HTTP/1.1" 503 UF,URX 0 0 3 - "-" "-" "-" "blog.example.com"'
            ' "/dev/shm/hugo.sock"',
            id="UF,URX",
        ),
    ],
)
def test_parity_vectors(
    fields: dict[str, object], req: dict[str, str], resp: dict[str, str], line: str
) -> None:
    info = make_info(start=T2025, duration_ms=3.2, req=req, resp=resp, **fields)
    assert default(info) == "[2025-01-01T00:00:00.000Z] " + line.format(uuid=UUID) + "\n"


def test_unset_values_and_omit_empty_values() -> None:
    info = make_info(protocol="", upstream_host=None, duration_ms=None)
    info.start_mono = time.monotonic() - 2.5  # DURATION is Envoy's currentDuration()
    fmt = "%PROTOCOL%|%UPSTREAM_HOST%|%REQ(X-NOPE)%|%RESPONSE_FLAGS%|%ROUTE_NAME%"
    assert render(fmt, info) == "-|-|-|-|-"
    # RESPONSE_FLAGS is "-" even then: Envoy treats "no flags" as a value, not as unset.
    assert render(fmt, info, omit_empty_values=True) == "|||-|"
    assert int(render("%DURATION%", info)) >= 2500


# -- START_TIME -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "out"),
    [
        ("%START_TIME%", "2020-04-27T02:49:47.943Z"),
        ("%START_TIME()%", "2020-04-27T02:49:47.943Z"),
        ("%START_TIME(%Y/%m/%dT%H:%M:%S%z %s)%", "2020/04/27T02:49:47+0000 1587955787"),
        ("%START_TIME(%s.%3f)%", "1587955787.943"),
        ("%START_TIME(%s.%6f)%", "1587955787.943000"),
        ("%START_TIME(%s.%9f)%", "1587955787.943000000"),
        ("%START_TIME(%f)%", "943000000"),
        ("%START_TIME(%1f|%3f)%", "9|943"),
        ("%START_TIME(%H:%M:%E3S %Z %Ez)%", "02:49:47.000 UTC +00:00"),  # absl, whole seconds
        ("%START_TIME(100%%f %a %b)%", "100%f Mon Apr"),
    ],
)
def test_start_time_formats(fmt: str, out: str) -> None:
    assert render(fmt, make_info()) == out


def test_start_time_cache_follows_the_second() -> None:
    f = compile_text("%START_TIME% %START_TIME(%s.%3f)%")
    for t, out in [
        (T0, "2020-04-27T02:49:47.943Z 1587955787.943"),
        (T0 + 0.05, "2020-04-27T02:49:47.993Z 1587955787.993"),
        (T0 + 0.1, "2020-04-27T02:49:48.043Z 1587955788.043"),
        (T0, "2020-04-27T02:49:47.943Z 1587955787.943"),
    ]:
        assert f.format(make_info(start=t)) == out


def test_start_time_survives_float_rounding() -> None:
    # 1700000000.001 is stored as 1700000000.0009999; Envoy has the exact time and prints .001
    assert render("%START_TIME%", make_info(start=1700000000.001)) == "2023-11-14T22:13:20.001Z"


# -- headers ----------------------------------------------------------------------------------


def test_req_fallback_truncation_and_case() -> None:
    info = make_info(path=b"/rewritten", req={"x-envoy-original-path": "/original", "a": "xyz"})
    assert render("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", info) == "/original"
    assert render("%REQ(x-envoy-original-path?:path)%", info) == "/original"
    assert render("%REQ(:PATH)% %REQ(X-NOPE?:PATH)%", info) == "/rewritten /rewritten"
    assert render("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):3%|%REQ(A):0%|%REQ(A):9%", info) == "/or||xyz"
    assert render("%REQ(X-NOPE?X-NOPE2)%", info) == "-"


def test_req_pseudo_headers() -> None:
    info = make_info(method=b"POST", authority=b"h.example:8080", path=b"/p?q=1")
    fmt = "%REQ(:METHOD)% %REQ(:SCHEME)% %REQ(:AUTHORITY)% %REQ(HOST)% %REQ(:PATH)% %REQ(:X)%"
    assert render(fmt, info) == "POST http h.example:8080 h.example:8080 /p?q=1 -"
    assert render("%RESP(:STATUS)%", info) == "200"
    assert render("%RESP(:STATUS)%", make_info(response_code=0)) == "-"


def test_empty_header_value_is_logged_empty_like_envoy() -> None:
    assert render('"%REQ(USER-AGENT)%"', make_info(req={"user-agent": ""})) == '""'


def test_repeated_headers_first_wins_inline_headers_join() -> None:
    info = make_info()
    info.request_headers = [
        (b"x-custom", b"one"),
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-custom", b"two"),
        (b"x-forwarded-for", b"2.2.2.2"),
    ]
    assert render("%REQ(X-CUSTOM)% %REQ(X-FORWARDED-FOR)%", info) == "one 1.1.1.1,2.2.2.2"


def test_resp_and_trailer() -> None:
    info = make_info(resp={"content-type": "text/html", "x-envoy-upstream-service-time": "12"})
    assert render("%RESP(CONTENT-TYPE)% %RESP(X-NOPE?Content-Type):4%", info) == "text/html text"
    assert render("%TRAILER(GRPC-STATUS)%", info) == "-"


def test_bytes_are_logged_unchanged() -> None:
    # Header bytes go out as received; format text and str fields as UTF-8, like Envoy.
    info = make_info(route_name="rüte")
    info.request_headers = [(b"user-agent", "café ☕".encode() + b"\xff")]
    line = render("é %REQ(USER-AGENT)% %ROUTE_NAME%", info)
    assert line.encode("latin-1") == "é café ☕".encode() + b"\xff " + "rüte".encode()
    js = compile_json({"ua": "%REQ(USER-AGENT)%", "r": "é %ROUTE_NAME%"}).render(info)
    assert js == '{"r":"é rüte","ua":"café ☕'.encode() + b'\xff"}\n'
    when = compile_text("%START_TIME(é %Y)% %RESPONSE_FLAGS%").render(make_info())
    assert when == "é 2020 -".encode()


# -- other operators --------------------------------------------------------------------------


def test_durations_truncate_and_missing_is_dash() -> None:
    info = make_info(duration_ms=25.9)
    info.last_downstream_rx_mono = 5000.0019
    info.last_upstream_tx_mono = 5000.0021
    info.first_upstream_rx_mono = 5000.0150
    fmt = "%DURATION% %REQUEST_DURATION% %REQUEST_TX_DURATION% %RESPONSE_DURATION%"
    assert render(fmt + " %RESPONSE_TX_DURATION%", info) == "25 1 2 15 10"
    assert render(fmt + " %RESPONSE_TX_DURATION%", make_info()) == "10 - - - -"


def test_counters_and_names() -> None:
    info = make_info(
        bytes_received=12,
        bytes_sent=34,
        attempt_count=2,
        connection_id=77,
        upstream_cluster="hugo",
        route_name="blog",
        upstream_protocol="HTTP/1.1",
        response_flags=ResponseFlag.UF | ResponseFlag.URX,
    )
    fmt = (
        "%BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %CONNECTION_ID%"
        " %UPSTREAM_CLUSTER% %UPSTREAM_CLUSTER_RAW% %ROUTE_NAME% %UPSTREAM_PROTOCOL%"
        " %RESPONSE_FLAGS_LONG%"
    )
    assert render(fmt, info) == (
        "12 34 2 77 hugo hugo blog HTTP/1.1 UpstreamConnectionFailure,UpstreamRetryLimitExceeded"
    )


def test_details_and_failure_reason_replace_spaces() -> None:
    info = make_info(
        response_code_details="upstream_reset_before_response_started{connection failure}",
        upstream_transport_failure_reason="delayed connect error: 111",
    )
    assert render("%RESPONSE_CODE_DETAILS% %UPSTREAM_TRANSPORT_FAILURE_REASON%", info) == (
        "upstream_reset_before_response_started{connection_failure} delayed_connect_error:_111"
    )
    assert render("%RESPONSE_CODE_DETAILS(ALLOW_WHITESPACES)%", info).endswith(
        "{connection failure}"
    )
    assert render("%RESPONSE_CODE_DETAILS%", make_info()) == "-"


def test_addresses_ip_ipv6_and_pipe() -> None:
    info = make_info(
        downstream_remote=Peer("203.0.113.7", 51234),
        downstream_direct_remote=Peer("::1", 40000),
        downstream_local=Peer("/run/udsproxy.sock", None),
        upstream_local=None,
    )
    remote = "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
    assert (
        render(remote + " %DOWNSTREAM_REMOTE_PORT%", info) == "203.0.113.7:51234 203.0.113.7 51234"
    )
    direct = "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%"
    assert render(direct + " %DOWNSTREAM_DIRECT_REMOTE_PORT%", info) == "[::1]:40000 ::1 40000"
    # "Only IP addresses have ports": Envoy logs an empty port for a pipe, not "-".
    assert render(
        "%DOWNSTREAM_LOCAL_ADDRESS%|%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%|%DOWNSTREAM_LOCAL_PORT%",
        info,
    ) == ("/run/udsproxy.sock|/run/udsproxy.sock|")
    assert render("%UPSTREAM_LOCAL_ADDRESS% %UPSTREAM_LOCAL_PORT%", info) == "- -"


def test_upstream_host_variants() -> None:
    pipe = make_info()
    assert render(
        "%UPSTREAM_HOST%|%UPSTREAM_REMOTE_ADDRESS%|%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
        "|%UPSTREAM_REMOTE_PORT%",
        pipe,
    ) == ("/dev/shm/hugo.sock|/dev/shm/hugo.sock|/dev/shm/hugo.sock|")
    assert render("%UPSTREAM_HOST%", make_info(upstream_host="@hugo")) == "@hugo"
    fmt = "%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_REMOTE_PORT%"
    assert render(fmt, make_info(upstream_host="[fd00::2]:8080")) == "fd00::2 8080"
    assert render(fmt, make_info(upstream_host="10.0.2.1:80")) == "10.0.2.1 80"
    assert render(fmt, make_info(upstream_host="fd00::2")) == "fd00::2 "
    typed = compile_json({"port": "%UPSTREAM_REMOTE_PORT%", "host": "%UPSTREAM_HOST%"})
    assert typed.format(make_info(upstream_host="10.0.2.1:80")) == (
        '{"host":"10.0.2.1:80","port":80}\n'
    )
    assert typed.format(pipe) == '{"host":"/dev/shm/hugo.sock","port":null}\n'


def test_misc_operators() -> None:
    info = make_info()
    assert render("100%% %HOSTNAME%", info) == f"100% {socket.gethostname()}"
    fmt = "%REQUESTED_SERVER_NAME% %CONNECTION_TERMINATION_DETAILS% %DOWNSTREAM_TLS_VERSION%"
    assert render(fmt + " %DYNAMIC_METADATA(envoy.lb:canary):5%", info) == "- - - -"


# -- json_format ------------------------------------------------------------------------------


def test_json_typed_values_nesting_and_sorted_keys() -> None:
    info = make_info(
        bytes_sent=169949,
        req={"user-agent": 'say "hi"\n'},
        downstream_remote=Peer("203.0.113.7", 51234),
        downstream_local=Peer("/run/u.sock", None),
    )
    f = compile_json(
        {
            "status": "%RESPONSE_CODE%",
            "bytes": "%BYTES_SENT%",
            "duration_text": "%DURATION%.0",
            "ua": "%REQ(USER-AGENT)%",
            "missing": "%REQ(X-NOPE)%",
            "req_ms": "%REQUEST_DURATION%",
            "when": "%START_TIME%",
            "lit": "plain 100%%",
            "peer": {"port": "%DOWNSTREAM_REMOTE_PORT%", "pipe_port": "%DOWNSTREAM_LOCAL_PORT%"},
            "mixed": "%PROTOCOL% %REQ(X-NOPE)%",
            "list": [1, 2.0, 2.5, True, None, "%BYTES_SENT%", {"b": "x", "a": "%ROUTE_NAME%"}],
        }
    )
    line = f.format(info)
    assert f.render(info) == line.encode("latin-1")
    assert line.endswith("}\n") and line.count("\n") == 1
    assert line == (
        '{"bytes":169949,"duration_text":"10.0","list":[1,2,2.5,true,null,169949,'
        '{"a":null,"b":"x"}],"lit":"plain 100%","missing":null,"mixed":"HTTP/1.1 -",'
        '"peer":{"pipe_port":null,"port":51234},"req_ms":null,"status":200,'
        '"ua":"say \\"hi\\"\\n","when":"2020-04-27T02:49:47.943Z"}\n'
    )
    assert json.loads(line)["ua"] == 'say "hi"\n'


def test_json_key_order_can_follow_config() -> None:
    f = compile_json({"z": "%RESPONSE_CODE%", "a": "%PROTOCOL%"}, sort_keys=False)
    assert f.format(make_info()) == '{"z":200,"a":"HTTP/1.1"}\n'


def test_json_omit_empty_values() -> None:
    f = compile_json(
        {
            "code": "%RESPONSE_CODE%",
            "ua": "%REQ(USER-AGENT)%",
            "gone": {"a": "%REQ(X-NOPE)%", "b": {"c": "%ROUTE_NAME%"}},
            "kept": {"a": "%REQ(X-NOPE)%", "flags": "%RESPONSE_FLAGS%"},
            "list": ["%REQ(X-NOPE)%", "%RESPONSE_CODE%"],
            "empty_list": ["%REQ(X-NOPE)%"],
            "mixed": "[%REQ(X-NOPE)%]",
            "port": "%DOWNSTREAM_LOCAL_PORT%",
        },
        omit_empty_values=True,
    )
    info = make_info(downstream_local=Peer("/run/u.sock", None))
    assert f.format(info) == (
        '{"code":200,"empty_list":[],"kept":{"flags":"-"},"list":[200],"mixed":"[]"}\n'
    )
    everything_unset = compile_json({"a": "%REQ(X-NOPE)%"}, omit_empty_values=True)
    assert everything_unset.format(info) == "{}\n"  # the root object is always printed


def test_compile_access_log_picks_the_format() -> None:
    info = make_info(req={"x-request-id": UUID})
    assert compile_access_log(AccessLog(path="/dev/null")).format(info) == default(info)
    text = AccessLog(path="/dev/null", text_format="%REQ(X-NOPE)%|\n", omit_empty_values=True)
    assert compile_access_log(text).format(info) == "|\n"
    js = AccessLog(path="/dev/null", json_format={"id": "%REQ(X-REQUEST-ID)%"})
    assert compile_access_log(js).format(info) == f'{{"id":"{UUID}"}}\n'


# -- errors at config time --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("[%START_TIME%] %NOPE%", "unknown command operator %NOPE% at position 15"),
        ("%start_time%", "no valid command operator at position 0"),
        ("100%", "no valid command operator at position 3"),
        ("%REQ(A)x%", "no valid command operator at position 0"),
        ("%REQ%", "%REQ% at position 0 requires parameters"),
        ("%REQ()%", "requires parameters"),
        ("x %PROTOCOL(1)%", "%PROTOCOL% at position 2 does not take any parameters or length"),
        ("%DURATION:3%", "does not take any parameters or length"),
        ("%START_TIME:3%", "does not allow a length"),
        ("%REQ(A?B?C)%", "more than 1 alternative header"),
        ("%REQ(A B)%", "invalid header name"),
        ("%START_TIME(%Y%n)%", "newline"),
        ("%DYNAMIC_METADATA%", "requires parameters"),
    ],
)
def test_bad_formats_raise_format_error(fmt: str, message: str) -> None:
    with pytest.raises(FormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_text(fmt)


def test_format_error_is_a_value_error_and_json_errors_name_the_key() -> None:
    assert issubclass(FormatError, ValueError)
    with pytest.raises(FormatError, match=r"json_format\.a\.b: unknown command operator %X%"):
        compile_json({"a": {"b": "%X%"}})
    with pytest.raises(FormatError, match=r"json_format\.a\[1\]: unsupported value"):
        compile_json({"a": ["ok", {1, 2}]})
    with pytest.raises(FormatError, match="keys must be strings"):
        compile_json({"a": {1: "x"}})


def test_generated_source_is_inspectable() -> None:
    f = compile_text(DEFAULT_FORMAT)
    assert f.source.startswith("def _render(i):")
    assert "_render" in repr(f)


def test_scheme_is_the_forwarded_proto() -> None:
    # Envoy's HTTP/1 :scheme follows the sanitized x-forwarded-proto: https on TLS listeners.
    https = make_info(req={"x-forwarded-proto": "https"})
    assert render("%REQ(:SCHEME)% %REQ(:METHOD)%\n", https) == "https GET\n"
    assert render("%REQ(:SCHEME)%\n", make_info()) == "http\n"
