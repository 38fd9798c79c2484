"""convert: header mutations, direct_response, host rewrites and local_reply_config."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_config_convert import bootstrap  # same folder (pytest puts it on sys.path)

from udsproxy.config.load import load_tree
from udsproxy.config.schema import (
    AccessLogFilter,
    DataSource,
    DirectResponse,
    HeaderMatcher,
    HeaderValueOption,
)
from udsproxy.errors import ConfigError

HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
RC = f"{HCM_PATH}.route_config"
ROUTE = f"{RC}.virtual_hosts[0].routes[0]"


def with_hcm(**fields: Any) -> dict[str, Any]:
    tree = bootstrap()
    hcm = tree["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"].update(copy.deepcopy(fields))
    return tree


def with_route(route: dict[str, Any], vhost: dict[str, Any] | None = None, **rc: Any):
    tree = with_hcm()
    config = tree["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    route_config = config["typed_config"]["route_config"]
    route_config["virtual_hosts"][0]["routes"] = [route]
    route_config["virtual_hosts"][0].update(vhost or {})
    route_config.update(rc)
    return tree


def errors(tree: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_tree(tree)
    return caught.value.errors


def test_header_fields_at_three_levels_and_append_spellings() -> None:
    add = [
        {"header": {"key": "X-A", "value": "1"}},
        {"header": {"key": "x-b", "value": "%REQ(x)%"}, "append": False},
        {"header": {"key": "x-c", "value": ""}, "append_action": "ADD_IF_ABSENT"},
        {"header": {"key": "x-d", "value": "v"}, "keep_empty_value": True},
    ]
    route = {
        "match": {"prefix": "/"},
        "route": {"cluster": "c"},
        "request_headers_to_add": add,
        "response_headers_to_remove": ["X-Gone"],
    }
    tree = with_route(
        route,
        {"response_headers_to_add": [{"header": {"key": "x-v", "value": "1"}}]},
        request_headers_to_remove=["x-r"],
        most_specific_header_mutations_wins=True,
    )
    rc = load_tree(tree).listeners[0].http_connection_manager.route_config
    r = rc.virtual_hosts[0].routes[0]
    assert r.request_headers_to_add == (
        HeaderValueOption(key="x-a", value="1"),
        HeaderValueOption(key="x-b", value="%REQ(x)%", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
        HeaderValueOption(key="x-c", value="", append_action="ADD_IF_ABSENT"),
        HeaderValueOption(key="x-d", value="v", keep_empty_value=True),
    )
    assert r.response_headers_to_remove == ("x-gone",)
    assert rc.virtual_hosts[0].response_headers_to_add == (HeaderValueOption(key="x-v", value="1"),)
    assert rc.request_headers_to_remove == ("x-r",)
    assert rc.most_specific_header_mutations_wins is True


def test_header_refusals_name_the_field() -> None:
    route = {
        "match": {"prefix": "/"},
        "route": {"cluster": "c"},
        "request_headers_to_add": [
            {"header": {"key": "host", "value": "x"}},
            {"header": {"key": "x-a", "value": "%RESP(x)%"}},
            {"header": {"key": "x-b", "value": "%NOT_A_COMMAND%"}},
            {
                "header": {"key": "x-c", "value": "1"},
                "append": True,
                "append_action": "ADD_IF_ABSENT",
            },
        ],
        "request_headers_to_remove": [":path"],
        "response_headers_to_add": [{"header": {"key": "transfer-encoding", "value": "x"}}],
    }
    found = dict(errors(with_route(route)))
    add = f"{ROUTE}.request_headers_to_add"
    assert found[f"{add}[0].header.key"] == ":-prefixed or host headers may not be modified"
    assert "%RESP% in a request header not supported by udsproxy" in found[f"{add}[1].header.value"]
    assert "unknown command operator %NOT_A_COMMAND%" in found[f"{add}[2].header.value"]
    assert found[f"{add}[3]"] == "Both append and append_action are set and it's not allowed"
    assert found[f"{ROUTE}.request_headers_to_remove[0]"] == (
        ":-prefixed or host headers may not be removed"
    )
    key = f"{ROUTE}.response_headers_to_add[0].header.key"
    assert found[key].startswith("header 'transfer-encoding' not supported by udsproxy")


def test_direct_response_and_its_body_limit() -> None:
    route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 403, "body": {"inline_string": "denied\n"}},
    }
    r = load_tree(with_route(route)).listeners[0].http_connection_manager.route_config
    assert r.virtual_hosts[0].routes[0].direct_response == DirectResponse(
        status=403, body=DataSource(kind="inline_string", value="denied\n")
    )
    assert r.virtual_hosts[0].routes[0].route is None
    big = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": "x" * 4097}},
    }
    assert errors(with_route(big)) == [
        (f"{ROUTE}.direct_response.body", "response body size is 4097 bytes; maximum is 4096")
    ]
    load_tree(with_route(big, max_direct_response_body_size_bytes=5000))  # raised: accepted


def test_host_rewrites() -> None:
    route = {
        "match": {"prefix": "/"},
        "route": {
            "cluster": "c",
            "host_rewrite_literal": "up.example",
            "append_x_forwarded_host": True,
        },
    }
    r = load_tree(with_route(route)).listeners[0].http_connection_manager.route_config
    action = r.virtual_hosts[0].routes[0].route
    assert action is not None
    assert (action.host_rewrite_literal, action.append_x_forwarded_host) == ("up.example", True)
    regex = {
        "match": {"prefix": "/"},
        "route": {
            "cluster": "c",
            "host_rewrite_path_regex": {"pattern": {"regex": "^/(.+)/.+$"}, "substitution": "\\1"},
        },
    }
    assert errors(with_route(regex)) == [
        (f"{ROUTE}.route.host_rewrite_path_regex", "not supported by udsproxy")
    ]


def test_local_reply_config() -> None:
    config = {
        "mappers": [
            {
                "filter": {
                    "or_filter": {
                        "filters": [
                            {
                                "status_code_filter": {
                                    "comparison": {
                                        "op": "GE",
                                        "value": {"default_value": 500, "runtime_key": "k"},
                                    }
                                }
                            },
                            {
                                "header_filter": {
                                    "header": {"name": ":method", "string_match": {"exact": "GET"}}
                                }
                            },
                        ]
                    }
                },
                "status_code": 502,
                "body": {"inline_string": "oops"},
                "headers_to_add": [{"header": {"key": "x-m", "value": "1"}}],
            },
            {"filter": {"response_flag_filter": {"flags": ["UF", "NR"]}}},
        ],
        "body_format": {
            "json_format": {"code": "%RESPONSE_CODE%"},
            "content_type": "application/problem+json",
        },
    }
    hcm = load_tree(with_hcm(local_reply_config=config)).listeners[0].http_connection_manager
    lrc = hcm.local_reply_config
    assert lrc is not None and len(lrc.mappers) == 2
    first = lrc.mappers[0]
    assert first.filter == AccessLogFilter(
        kind="or",
        filters=(
            AccessLogFilter(kind="status_code", op="GE", value=500, runtime_key="k"),
            AccessLogFilter(kind="header", header=HeaderMatcher(name=":method", exact="GET")),
        ),
    )
    assert (first.status_code, first.body) == (502, DataSource(kind="inline_string", value="oops"))
    assert lrc.mappers[1].filter == AccessLogFilter(kind="response_flag", flags=("UF", "NR"))
    assert lrc.body_format is not None
    assert lrc.body_format.content_type == "application/problem+json"


def test_local_reply_refusals() -> None:
    config = {
        "mappers": [
            {"filter": {"runtime_filter": {"runtime_key": "k"}}},
            {"filter": {"response_flag_filter": {"flags": ["XX"]}}},
            {
                "filter": {"not_health_check_filter": {}},
                "body_format_override": {"text_format_source": {"inline_string": "%BAD%"}},
            },
        ]
    }
    found = dict(errors(with_hcm(local_reply_config=config)))
    mappers = f"{HCM_PATH}.local_reply_config.mappers"
    assert found[f"{mappers}[0].filter.runtime_filter"].startswith("not supported by udsproxy")
    assert (
        found[f"{mappers}[1].filter.response_flag_filter.flags[0]"] == "unknown response flag 'XX'"
    )
    assert "unknown command operator %BAD%" in found[f"{mappers}[2].body_format_override"]
