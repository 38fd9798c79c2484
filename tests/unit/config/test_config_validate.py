"""The schema walker: Envoy's v3 API via envoy-data-plane's metadata, canonical output."""

from __future__ import annotations

import math
from typing import Any

import pytest

from udsproxy.config.validate import (
    BOOTSTRAP,
    check,
    describe,
    entry,
    item,
    join,
    resolve_type,
    validate,
)
from udsproxy.errors import ConfigError

CLUSTER = "envoy.config.cluster.v3.Cluster"
ROUTER_URL = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def named(tree: object, type_name: str) -> object:
    """Clusters need a name (Envoy's validation rule); add one so tests see only their error."""
    if type_name == CLUSTER and isinstance(tree, dict) and "name" not in tree:
        return {"name": "c", **tree}
    return tree


def canonical(tree: dict[str, Any], type_name: str = CLUSTER) -> dict[str, Any]:
    out = validate(named(tree, type_name), type_name)
    if "name" not in tree:
        out.pop("name", None)
    return out


def errors(tree: object, type_name: str = CLUSTER) -> list[tuple[str, str]]:
    return check(named(tree, type_name), type_name)[1]


def one_error(tree: object, type_name: str = CLUSTER) -> tuple[str, str]:
    found = errors(tree, type_name)
    assert len(found) == 1, found
    return found[0]


# --- paths and messages ---------------------------------------------------------------------------


def test_path_helpers() -> None:
    assert join("", "a") == "a"
    assert join("a", "b") == "a.b"
    assert item("a", 3) == "a[3]"
    assert entry("a", "x.y") == 'a["x.y"]'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        (True, "bool true"),
        (5, "int 5"),
        (1.5, "float 1.5"),
        ("x", "string 'x'"),
        ("y" * 70, "string '" + "y" * 61 + "...'"),
        ({}, "a mapping"),
        ([], "a list"),
    ],
)
def test_describe(value: object, text: str) -> None:
    assert describe(value) == text


# --- names ----------------------------------------------------------------------------------------


def test_camel_case_keys_are_normalized() -> None:
    tree = {"name": "c", "connectTimeout": "1s", "perConnectionBufferLimitBytes": 10}
    assert validate(tree, CLUSTER) == {
        "name": "c",
        "connect_timeout": 1.0,
        "per_connection_buffer_limit_bytes": 10,
    }


def test_same_field_twice_under_both_names() -> None:
    assert one_error({"connect_timeout": "1s", "connectTimeout": "2s"}) == (
        "connectTimeout",
        "field 'connect_timeout' is already given as 'connect_timeout'",
    )


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("conect_timeout", "unknown field 'conect_timeout' (did you mean 'connect_timeout'?)"),
        ("conectTimeout", "unknown field 'conectTimeout' (did you mean 'connect_timeout'?)"),
        ("zzz", "unknown field 'zzz'"),
    ],
)
def test_unknown_field_suggestion(key: str, message: str) -> None:
    assert one_error({key: "1s"}) == (key, message)


def test_non_string_key() -> None:
    assert one_error({5: "x"}) == ("5", "field names must be strings, got int 5")


def test_python_keyword_field_uses_proto_name() -> None:
    # betterproto2 calls the proto field "in" in_; the YAML must say "in".
    assert validate({"in": ["a"]}, "validate.AnyRules") == {"in": ["a"]}
    assert one_error({"in_": ["a"]}, "validate.AnyRules")[1].startswith("unknown field 'in_'")


# --- scalars --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "result"),
    [(0, 0), (4294967295, 4294967295), ("42", 42), (7.0, 7)],
)
def test_uint32_accepted(value: object, result: int) -> None:
    out = canonical({"per_connection_buffer_limit_bytes": value})
    assert out["per_connection_buffer_limit_bytes"] == result


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "-1 is out of range for uint32 (0..4294967295)"),
        (2**32, "4294967296 is out of range for uint32 (0..4294967295)"),
        (True, "expected an integer, got bool true"),
        (1.5, "expected an integer, got float 1.5"),
        ("1e3", "expected an integer, got string '1e3'"),
        ([1], "expected an integer, got a list"),
    ],
)
def test_uint32_rejected(value: object, message: str) -> None:
    assert one_error({"per_connection_buffer_limit_bytes": value}) == (
        "per_connection_buffer_limit_bytes",
        message,
    )


def test_int32_range() -> None:
    assert validate({"start": -(2**31), "end": 2**31 - 1}, "envoy.type.v3.Int32Range") == {
        "start": -(2**31),
        "end": 2**31 - 1,
    }
    assert one_error({"end": 2**31}, "envoy.type.v3.Int32Range") == (
        "end",
        "2147483648 is out of range for int32 (-2147483648..2147483647)",
    )


@pytest.mark.parametrize(
    ("value", "result"),
    [(50, 50.0), (0.5, 0.5), ("0.90", 0.9), ("1e2", 100.0), ("Infinity", math.inf)],
)
def test_double_accepted(value: object, result: float) -> None:
    assert validate({"value": value}, "envoy.type.v3.Percent") == {"value": result}


@pytest.mark.parametrize("value", [True, "abc", "nan", {}])
def test_double_rejected(value: object) -> None:
    path, message = one_error({"value": value}, "envoy.type.v3.Percent")
    assert (path, message) == ("value", f"expected a number, got {describe(value)}")


def test_bool() -> None:
    assert canonical({"respect_dns_ttl": True}) == {"respect_dns_ttl": True}
    assert canonical({"respect_dns_ttl": "true"}) == {"respect_dns_ttl": True}
    assert one_error({"respect_dns_ttl": 1}) == (
        "respect_dns_ttl",
        "expected true or false, got int 1",
    )


def test_string_does_not_take_numbers() -> None:
    assert one_error({"name": 5}) == ("name", "expected a string, got int 5")


def test_implicit_presence_defaults_are_dropped() -> None:
    # proto3: 0, "", false, the zero enum value and empty lists are "unset".
    tree = {"name": "", "respect_dns_ttl": False, "lb_policy": "ROUND_ROBIN", "health_checks": []}
    assert check(tree, CLUSTER)[0] == {}  # (the missing name is an error, not a default)


def test_explicit_presence_is_kept() -> None:
    # oneof members and wrappers keep their zero values.
    tree = {"type": "STATIC", "per_connection_buffer_limit_bytes": 0}
    assert canonical(tree) == {"type": "STATIC", "per_connection_buffer_limit_bytes": 0}


def test_null_means_unset() -> None:
    assert validate({"name": "c", "load_assignment": None}, CLUSTER) == {"name": "c"}


# --- enums ----------------------------------------------------------------------------------------


def test_enum_by_name_or_number() -> None:
    assert canonical({"type": "STRICT_DNS"}) == {"type": "STRICT_DNS"}
    assert canonical({"type": 1}) == {"type": "STRICT_DNS"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("STATIK", "unknown enum value 'STATIK' (expected one of "),
        (9, "unknown enum value 9 (expected one of "),
        (True, "expected one of STATIC, STRICT_DNS, LOGICAL_DNS, EDS, ORIGINAL_DST, got bool"),
    ],
)
def test_enum_rejected(value: object, message: str) -> None:
    path, found = one_error({"type": value})
    assert path == "type"
    assert found.startswith(message)


# --- oneofs and rules -----------------------------------------------------------------------------


def test_oneof_at_most_one_member() -> None:
    tree = {"socket_address": {"address": "::1", "port_value": 1}, "pipe": {"path": "/x"}}
    assert one_error(tree, "envoy.config.core.v3.Address") == (
        "",
        "only one of 'socket_address', 'pipe' may be set (oneof 'address')",
    )


def test_required_oneof() -> None:
    assert one_error({}, "envoy.config.core.v3.Address") == (
        "",
        "one of 'socket_address', 'pipe', 'envoy_internal_address' is required",
    )


def test_no_required_error_on_top_of_a_type_error() -> None:
    tree = {"address": "127.0.0.1", "port_value": "http"}
    assert one_error(tree, "envoy.config.core.v3.SocketAddress") == (
        "port_value",
        "expected an integer, got string 'http'",
    )


@pytest.mark.parametrize(
    ("tree", "error"),
    [
        ({"path": "/x", "mode": 0o1000}, ("mode", "must be at most 0o777, got 0o1000")),
        ({"mode": 0o600}, ("path", "is required and must not be empty")),
    ],
)
def test_pipe_rules(tree: dict[str, Any], error: tuple[str, str]) -> None:
    assert one_error(tree, "envoy.config.core.v3.Pipe") == error


def test_rule_on_duration() -> None:
    assert one_error({"name": "c", "connect_timeout": "0s"}) == (
        "connect_timeout",
        "must be greater than 0s, got 0s",
    )


# --- lists and maps -------------------------------------------------------------------------------


def test_single_element_in_place_of_a_list() -> None:
    check = {"timeout": "1s", "interval": "2s", "unhealthy_threshold": 1, "healthy_threshold": 1}
    tree = {"name": "c", "health_checks": {**check, "http_health_check": {"path": "/"}}}
    assert validate(tree, CLUSTER)["health_checks"] == [
        {**check, "timeout": 1.0, "interval": 2.0, "http_health_check": {"path": "/"}}
    ]


def test_null_in_a_list() -> None:
    assert one_error({"health_checks": [None]}) == (
        "health_checks[0]",
        "null is not allowed in a list",
    )


def test_map_errors_are_keyed() -> None:
    tree = {"typed_extension_protocol_options": {"a": {"@type": "type.googleapis.com/x.Y"}}}
    assert one_error(tree) == (
        'typed_extension_protocol_options["a"]',
        "unknown @type 'type.googleapis.com/x.Y'",
    )
    assert one_error({"typed_extension_protocol_options": []}) == (
        "typed_extension_protocol_options",
        "expected a mapping, got a list",
    )


# --- well-known types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("0.25s", 0.25), ("1.5s", 1.5), ("0.000000001s", 1e-9), ("3600s", 3600.0)],
)
def test_duration_accepted(text: str, seconds: float) -> None:
    assert canonical({"dns_refresh_rate": text})["dns_refresh_rate"] == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("200ms", "invalid duration '200ms': must end with a single 's' (write '0.2s')"),
        ("2h", "invalid duration '2h': must end with a single 's' (write '7200s')"),
        ("1.s", "invalid duration '1.s': expected seconds ending in 's', e.g. '5s'"),
        ("-0.5s", "invalid duration '-0.5s': must not be negative"),
        ("1e3s", "invalid duration '1e3s': expected seconds ending in 's', e.g. '5s'"),
        ("315576000001s", "invalid duration '315576000001s': out of range"),
        (5, "expected a duration like '5s' or '0.25s', got int 5"),
    ],
)
def test_duration_rejected(value: object, message: str) -> None:
    assert one_error({"dns_refresh_rate": value}) == ("dns_refresh_rate", message)


def test_struct_is_copied_json() -> None:
    struct = {"a": [1, {"b": None}], "c": "%REQ(:PATH)%"}
    tree = {"path": "/x", "json_format": struct}
    out = validate(tree, "envoy.extensions.access_loggers.file.v3.FileAccessLog")
    assert out["json_format"] == struct
    assert out["json_format"] is not struct


def test_struct_rejects_non_json() -> None:
    log = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
    assert one_error({"path": "/x", "json_format": [1]}, log) == (
        "json_format",
        "expected a mapping, got a list",
    )
    assert one_error({"path": "/x", "json_format": {"a": {1: "x"}}}, log) == (
        'json_format.a["1"]',
        "keys must be strings, got int 1",
    )


def test_any_known_type() -> None:
    tree = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_URL}}
    out = validate(tree, "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter")
    assert out["typed_config"] == {"@type": "envoy.extensions.filters.http.router.v3.Router"}


def test_any_imports_other_envoy_types_on_demand() -> None:
    url = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
    tree = {"name": "t", "typed_config": {"@type": url, "statPrefix": "tcp", "cluster": "c"}}
    out = validate(tree, "envoy.config.listener.v3.Filter")
    assert out["typed_config"] == {
        "@type": "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "tcp",
        "cluster": "c",
    }


def test_any_fields_are_checked() -> None:
    tree = {"name": "r", "typed_config": {"@type": ROUTER_URL, "dynamic_stats": "yes"}}
    hcm_filter = "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter"
    assert one_error(tree, hcm_filter) == (
        "typed_config.dynamic_stats",
        "expected true or false, got string 'yes'",
    )


def test_any_holding_a_well_known_type() -> None:
    tree = {
        "name": "x",
        "typed_config": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "2s"},
    }
    out = validate(tree, "envoy.config.core.v3.TypedExtensionConfig")
    assert out["typed_config"] == {"@type": "google.protobuf.Duration", "value": 2.0}


@pytest.mark.parametrize(
    ("any_value", "error"),
    [
        (
            {"@type": "type.googleapis.com/acme.v1.Magic"},
            "unknown @type 'type.googleapis.com/acme.v1.Magic'",
        ),
        ({"level": 3}, "missing '@type'"),
        ("router", "expected a mapping with '@type', got string 'router'"),
    ],
)
def test_any_rejected(any_value: object, error: str) -> None:
    assert one_error(
        {"name": "x", "typed_config": any_value}, "envoy.config.listener.v3.Filter"
    ) == (
        "typed_config",
        error,
    )


def test_empty_any_is_accepted() -> None:
    # Envoy's legacy parser takes {} for an Any.
    assert validate({"name": "x", "typed_config": {}}, "envoy.config.listener.v3.Filter") == {
        "name": "x",
        "typed_config": {},
    }


@pytest.mark.parametrize(
    "name",
    ["acme.v1.Magic", "envoy.config.core.v3.NoSuchThing", "envoy/../os.Path", "os.path.join"],
)
def test_resolve_type_unknown(name: str) -> None:
    assert resolve_type("type.googleapis.com/" + name) is None


def test_resolve_type_known() -> None:
    cls = resolve_type("envoy.config.cluster.v3.Cluster.CommonLbConfig")
    assert cls is not None
    assert cls is resolve_type("type.googleapis.com/envoy.config.cluster.v3.Cluster.CommonLbConfig")


# --- whole documents ------------------------------------------------------------------------------


def test_every_error_is_reported_with_its_path() -> None:
    tree = {
        "static_resources": {
            "clusters": [
                {"name": "a", "conect_timeout": "1s"},
                {"name": "b", "connect_timeout": "5"},
                {"name": 3},
            ]
        }
    }
    with pytest.raises(ConfigError) as caught:
        validate(tree)
    assert caught.value.errors == [
        (
            "static_resources.clusters[0].conect_timeout",
            "unknown field 'conect_timeout' (did you mean 'connect_timeout'?)",
        ),
        (
            "static_resources.clusters[1].connect_timeout",
            "invalid duration '5': expected seconds ending in 's', e.g. '5s'",
        ),
        ("static_resources.clusters[2].name", "expected a string, got int 3"),
    ]


def test_check_keeps_the_valid_part() -> None:
    tree = {"static_resources": {"clusters": [{"name": "a", "connect_timeout": "x"}]}}
    canonical, found = check(tree)
    assert canonical == {"static_resources": {"clusters": [{"name": "a"}]}}
    assert len(found) == 1


def test_top_level_must_be_a_mapping() -> None:
    assert check([1], BOOTSTRAP) == ({}, [("", "expected a mapping, got a list")])


def test_unknown_root_type_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown message type"):
        validate({}, "acme.Nothing")
