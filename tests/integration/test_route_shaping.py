"""Route shaping against a real nginx: header mutations at three levels, direct_response, Host
rewrites and local_reply_config, each seen by nginx or the client and in the access log."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import SockPaths
from .support import (
    AccessLog,
    InProcessProxy,
    NginxInstance,
    bootstrap,
    cluster,
    get,
    listener,
    route,
    vhost,
)

Inproc = Callable[[dict[str, Any]], InProcessProxy]
LOG_FORMAT = (
    "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_SENT%"
    " %UPSTREAM_HOST% %REQ(:AUTHORITY)% %REQ(USER-AGENT)%\n"
)


def add(key: str, value: str, action: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"header": {"key": key, "value": value}}
    if action is not None:
        out["append_action"] = action
    return out


def config(
    routes: list[dict[str, Any]],
    clusters: list[dict[str, Any]],
    log: Path,
    vhost_fields: dict[str, Any] | None = None,
    rc_fields: dict[str, Any] | None = None,
    **hcm: Any,
) -> dict[str, Any]:
    lst = listener([{**vhost("shaping", routes), **(vhost_fields or {})}], access_log=log, **hcm)
    typed = lst["filter_chains"][0]["filters"][0]["typed_config"]
    typed["route_config"].update(rc_fields or {})
    log_config = typed["access_log"][0]["typed_config"]
    log_config["log_format"] = {"text_format_source": {"inline_string": LOG_FORMAT}}
    return bootstrap([lst], clusters)


def echoed(body: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in body.decode().splitlines())


def _three_levels(wins: bool) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    who = "OVERWRITE_IF_EXISTS_OR_ADD"
    shaped = route("nginx", path="/echo/headers")
    shaped.update(
        request_headers_to_add=[
            add("x-route", "r"),
            add("x-who", "route", who),
            add("x-peer", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
        ],
        request_headers_to_remove=["x-drop"],
        response_headers_to_add=[add("x-resp-route", "%RESPONSE_CODE% %REQ(x-route)%")],
        response_headers_to_remove=["x-upstream-drop"],
    )
    vhost_fields = {
        "request_headers_to_add": [add("x-vhost", "v"), add("x-who", "vhost", who)],
        "response_headers_to_add": [add("x-resp-vhost", "v")],
    }
    rc_fields = {
        "request_headers_to_add": [add("x-config", "c"), add("x-who", "config", who)],
        "response_headers_to_add": [add("x-resp-config", "c")],
        "most_specific_header_mutations_wins": wins,
    }
    return [shaped, route("nginx", prefix="/index.html")], vhost_fields, rc_fields


def test_headers_added_and_removed_at_three_levels(
    inproc: Inproc, nginx: NginxInstance, tmp_path: Path, user_agent: str
) -> None:
    routes, vhost_fields, rc_fields = _three_levels(wins=False)
    log = tmp_path / "access.log"
    p = inproc(config(routes, [cluster("nginx", nginx.socket_path)], log, vhost_fields, rc_fields))
    r = get(p.address(), "/echo/headers", headers={"X-Drop": "client", "User-Agent": user_agent})
    assert r.status == 200, r.body
    seen = echoed(r.body)
    assert (seen["x-route"], seen["x-vhost"], seen["x-config"]) == ("r", "v", "c")
    assert seen["x-who"] == "config"  # by default the least specific level is applied last
    assert seen["x-drop"] == ""  # removed before nginx saw it
    assert seen["x-peer"] == "127.0.0.1"  # a format command, rendered per request
    assert r.header("x-resp-route") == "200 r"
    assert (r.header("x-resp-vhost"), r.header("x-resp-config")) == ("v", "c")
    assert r.header("x-upstream-drop") is None and r.header("x-upstream-keep") == "nginx"
    line = AccessLog(log).wait_for_line(user_agent)
    assert line.startswith("/echo/headers 200 - via_upstream ")

    # a route of the same virtual host without route-level fields still gets the other two
    r = get(p.address(), "/index.html", headers={"User-Agent": user_agent})
    assert r.status == 200
    assert r.header("x-resp-route") is None
    assert (r.header("x-resp-vhost"), r.header("x-resp-config")) == ("v", "c")


def test_most_specific_header_mutations_wins(
    inproc: Inproc, nginx: NginxInstance, tmp_path: Path
) -> None:
    routes, vhost_fields, rc_fields = _three_levels(wins=True)
    log = tmp_path / "access.log"
    p = inproc(config(routes, [cluster("nginx", nginx.socket_path)], log, vhost_fields, rc_fields))
    r = get(p.address(), "/echo/headers")
    assert echoed(r.body)["x-who"] == "route"


def test_direct_response(inproc: Inproc, nginx: NginxInstance, tmp_path: Path, user_agent: str):
    routes = [
        {
            "match": {"prefix": "/direct"},
            "direct_response": {"status": 403, "body": {"inline_string": "denied\n"}},
            "response_headers_to_add": [add("x-direct", "%RESPONSE_CODE%")],
        },
        {"match": {"path": "/empty"}, "direct_response": {"status": 204}},
    ]
    log = tmp_path / "access.log"
    p = inproc(config(routes, [cluster("nginx", nginx.socket_path)], log))
    ua = {"User-Agent": user_agent}
    r = get(p.address(), "/direct", headers=ua)
    assert (r.status, r.body) == (403, b"denied\n")
    assert r.header("content-type") == "text/plain" and r.header("content-length") == "7"
    assert r.header("x-direct") == "403"  # the route's response headers apply to it
    assert r.header("server") == "envoy"
    line = AccessLog(log).wait_for_line(user_agent)
    assert line.startswith("/direct 403 - direct_response 7 - 127.0.0.1:"), line
    head = get(p.address(), "/direct", method="HEAD", headers=ua)
    assert (head.status, head.body, head.header("content-length")) == (403, b"", "7")
    r = get(p.address(), "/empty", headers=ua)
    assert (r.status, r.body, r.header("content-type")) == (204, b"", None)


def test_host_rewrite_literal_reaches_nginx(
    inproc: Inproc, nginx: NginxInstance, tmp_path: Path, user_agent: str
) -> None:
    rewrite = route("nginx", path="/echo/headers")
    rewrite["route"].update(host_rewrite_literal="up.example", append_x_forwarded_host=True)
    log = tmp_path / "access.log"
    p = inproc(config([rewrite], [cluster("nginx", nginx.socket_path)], log))
    host, port = p.address()
    r = get(p.address(), "/echo/headers", headers={"User-Agent": user_agent})
    seen = echoed(r.body)
    assert seen["host"] == "up.example"
    assert seen["x-forwarded-host"] == f"{host}:{port}"  # the original, as asked
    line = AccessLog(log).wait_for_line(user_agent)
    assert line.split()[6] == "up.example"  # %REQ(:AUTHORITY)% is what went upstream


def test_local_reply_config_rewrites_a_503(
    inproc: Inproc, tmp_path: Path, sock_path: SockPaths, user_agent: str
) -> None:
    dead = sock_path("nobody")  # no socket file: 503 UF
    shaped = route("dead", prefix="/")
    shaped["response_headers_to_add"] = [add("x-route-header", "yes")]
    local_reply_config = {
        "mappers": [
            {
                "filter": {
                    "status_code_filter": {
                        "comparison": {
                            "op": "EQ",
                            "value": {"default_value": 503, "runtime_key": "lr.503"},
                        }
                    }
                },
                "status_code": 502,
                "body": {"inline_string": "the backend is away"},
                "headers_to_add": [add("x-mapped", "%RESPONSE_FLAGS%")],
            }
        ],
        "body_format": {
            "json_format": {"status": "%RESPONSE_CODE%", "message": "%LOCAL_REPLY_BODY%"}
        },
    }
    log = tmp_path / "access.log"
    cfg = config(
        [shaped],
        [cluster("dead", dead)],
        log,
        local_reply_config=local_reply_config,
    )
    p = inproc(cfg)
    r = get(p.address(), "/x", headers={"User-Agent": user_agent})
    assert r.status == 502
    assert json.loads(r.body) == {"status": 502, "message": "the backend is away"}
    assert r.header("content-type") == "application/json"
    assert r.header("x-mapped") == "UF"
    assert r.header("x-route-header") == "yes"  # a router reply carries the route's headers
    line = AccessLog(log).wait_for_line(user_agent)
    details = "upstream_reset_before_response_started{connection_failure}"
    assert line.startswith(f"/x 502 UF {details} {len(r.body)} {dead} "), line

    # no route: the body format applies, the route's headers do not (no route was chosen)
    cfg = config(
        [route("dead", path="/only")],
        [cluster("dead", dead)],
        log,
        local_reply_config=local_reply_config,
    )
    p = inproc(cfg)
    r = get(p.address(), "/elsewhere", headers={"User-Agent": user_agent + "-nr"})
    assert r.status == 404
    assert json.loads(r.body) == {"status": 404, "message": ""}
    assert (
        AccessLog(log)
        .wait_for_line(user_agent + "-nr")
        .startswith("/elsewhere 404 NR route_not_found")
    )
