"""A cluster's transport_socket (UpstreamTlsContext) and DataSource: convert (every DataSource
kind, refusals), and load_and_resolve reading files, inline values and environment variables."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from conftest import Certs

from udsproxy.config.convert import REFUSED, _Converter
from udsproxy.config.dynamic import resolve
from udsproxy.config.load import load_tree
from udsproxy.config.schema import DataSource, SanMatcher, TlsCertificate, UpstreamTls
from udsproxy.errors import ConfigError

URL = "type.googleapis.com/"
KINDS = ("filename", "inline_bytes", "inline_string", "environment_variable")
UPSTREAM_TLS = URL + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
SOCKET = "static_resources.clusters[0].transport_socket"
CONTEXT = f"{SOCKET}.typed_config"
COMMON = f"{CONTEXT}.common_tls_context"


def bootstrap(context: dict[str, Any] | None = None, **socket: Any) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": "c",
        "load_assignment": {
            "cluster_name": "c",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": 443}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if context is not None or socket:
        cluster["transport_socket"] = socket or {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": UPSTREAM_TLS, **(context or {})},
        }
    return {"static_resources": {"clusters": [cluster]}}


def tls_of(context: dict[str, Any] | None = None, **socket: Any) -> UpstreamTls | None:
    return load_tree(bootstrap(context, **socket)).clusters[0].tls


def errors_of(context: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_tree(bootstrap(context))
    return caught.value.errors


# --- DataSource -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ({"filename": "/etc/ca.pem"}, DataSource(kind="filename", value="/etc/ca.pem")),
        ({"inline_string": "PEM"}, DataSource(kind="inline_string", value="PEM")),
        ({"inline_bytes": "UEVN"}, DataSource(kind="inline_bytes", value="UEVN")),
        ({"environment_variable": "CA"}, DataSource(kind="environment_variable", value="CA")),
    ],
)
def test_data_source_kinds(node: dict[str, str], expected: DataSource) -> None:
    converter = _Converter()
    assert converter.data_source(node, "x") == expected
    assert converter.errors == []


@pytest.mark.parametrize(
    ("node", "errors"),
    [
        (None, [("x", "is required")]),
        ({}, [("x", f"one of {', '.join(KINDS)} is required")]),
        ({"inline_bytes": "%%%"}, [("x.inline_bytes", "is not valid base64")]),
        ({"filename": ""}, [("x.filename", "must not be empty")]),
        ({"environment_variable": ""}, [("x.environment_variable", "must not be empty")]),
        ({"watched_directory": {"path": "/d"}}, [("x.watched_directory", REFUSED)]),
        (
            {"filename": "/a", "inline_string": "b"},
            [("x", "only one of filename, inline_string may be set")],
        ),
    ],
)  # fmt: skip
def test_data_source_errors(node: dict[str, Any] | None, errors: list[tuple[str, str]]) -> None:
    converter = _Converter()
    converter.data_source(node, "x")
    assert converter.errors == errors


def test_url_safe_unpadded_base64_is_accepted() -> None:
    # protobuf's JSON mapping accepts both alphabets, with or without padding
    data = bytes([0xFB, 0xFF, 0xFE])
    text = base64.urlsafe_b64encode(data).decode().rstrip("=")
    converter = _Converter()
    converter.data_source({"inline_bytes": text}, "x")
    assert converter.errors == []


# --- UpstreamTlsContext: convert ------------------------------------------------------------------


def test_no_transport_socket_is_plain_text() -> None:
    assert tls_of() is None


def test_raw_buffer_is_plain_text() -> None:
    raw = URL + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
    assert tls_of(name="envoy.transport_sockets.raw_buffer", typed_config={"@type": raw}) is None


def test_empty_context_verifies_nothing() -> None:
    # Envoy: no validation_context, no verification of the upstream certificate
    assert tls_of({}) == UpstreamTls()
    assert tls_of({"common_tls_context": {}}) == UpstreamTls()


def test_full_context() -> None:
    tls = tls_of(
        {
            "sni": "a.example",
            "common_tls_context": {
                "alpn_protocols": ["http/1.1"],
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_3"},
                "tls_certificates": [
                    {
                        "certificate_chain": {"inline_string": "CHAIN"},
                        "private_key": {"environment_variable": "KEY"},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": "/ca.pem"},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": "a.example"}},
                        {"san_type": "URI", "matcher": {"safe_regex": {"regex": "spiffe://.*"}}},
                        {"san_type": "EMAIL", "matcher": {"suffix": "@x", "ignore_case": True}},
                    ],
                },
            },
        }
    )
    assert tls == UpstreamTls(
        sni="a.example",
        trusted_ca=DataSource(kind="filename", value="/ca.pem"),
        san_matchers=(
            SanMatcher(san_type="DNS", exact="a.example"),
            SanMatcher(san_type="URI", safe_regex="spiffe://.*"),
            SanMatcher(san_type="EMAIL", suffix="@x", ignore_case=True),
        ),
        certificate=TlsCertificate(
            certificate_chain=DataSource(kind="inline_string", value="CHAIN"),
            private_key=DataSource(kind="environment_variable", value="KEY"),
        ),
        alpn_protocols=("http/1.1",),
        tls_minimum_protocol_version="TLSv1_3",
        tls_maximum_protocol_version="TLSv1_3",  # raised to the minimum set
    )


def test_corpus_tls_params_tls13_only() -> None:
    params = {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"}
    tls = tls_of({"common_tls_context": {"tls_params": params}})
    assert tls is not None
    assert (tls.tls_minimum_protocol_version, tls.tls_maximum_protocol_version) == (
        "TLSv1_3",
        "TLSv1_3",
    )


def test_legacy_san_matchers_match_any_type_with_a_warning() -> None:
    tree = bootstrap(
        {
            "common_tls_context": {
                "validation_context": {
                    "trusted_ca": {"filename": "/ca.pem"},
                    "match_subject_alt_names": [{"prefix": "svc."}],
                }
            }
        }
    )
    loaded = load_tree(tree)
    assert loaded.clusters[0].tls is not None
    assert loaded.clusters[0].tls.san_matchers == (SanMatcher(san_type="", prefix="svc."),)
    assert any("match_subject_alt_names" in w for w in loaded.warnings)


@pytest.mark.parametrize(
    ("context", "path", "message"),
    [
        ({"allow_renegotiation": True}, f"{CONTEXT}.allow_renegotiation", REFUSED),
        ({"enforce_rsa_key_usage": True}, f"{CONTEXT}.enforce_rsa_key_usage", REFUSED),
        (
            {"max_session_keys": 2},
            f"{CONTEXT}.max_session_keys",
            f"2 {REFUSED} (udsproxy does not resume upstream TLS sessions; only 0)",
        ),
        (
            {"common_tls_context": {"alpn_protocols": ["h2", "http/1.1"]}},
            f"{COMMON}.alpn_protocols[0]",
            f"'h2' {REFUSED} (udsproxy speaks HTTP/1.1 to upstreams; only http/1.1)",
        ),
        (
            {"common_tls_context": {"tls_params": {"cipher_suites": ["AES128-SHA"]}}},
            f"{COMMON}.tls_params.cipher_suites",
            REFUSED,
        ),
        (
            {"common_tls_context": {"tls_certificate_sds_secret_configs": [{"name": "x"}]}},
            f"{COMMON}.tls_certificate_sds_secret_configs",
            REFUSED,
        ),
        (
            {"common_tls_context": {"validation_context": {"crl": {"filename": "/crl"}}}},
            f"{COMMON}.validation_context.crl",
            REFUSED,
        ),
        (
            {
                "common_tls_context": {
                    "validation_context": {
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": "a"}}
                        ]
                    }
                }
            },
            f"{COMMON}.validation_context",
            "SAN-based verification of peer certificates without trusted CA is insecure and "
            "not allowed",
        ),
        (
            {
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": "/ca"},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"safe_regex": {"regex": "("}}}
                        ],
                    }
                }
            },
            f"{COMMON}.validation_context.match_typed_subject_alt_names[0].matcher.safe_regex"
            ".regex",
            "invalid regex '(': missing ), unterminated subpattern at position 0",
        ),
        (
            {
                "common_tls_context": {
                    "tls_params": {
                        "tls_minimum_protocol_version": "TLSv1_3",
                        "tls_maximum_protocol_version": "TLSv1_2",
                    }
                }
            },
            f"{COMMON}.tls_params.tls_minimum_protocol_version",
            "TLSv1_3 is above tls_maximum_protocol_version TLSv1_2",
        ),
    ],
)
def test_refusals(context: dict[str, Any], path: str, message: str) -> None:
    assert errors_of(context) == [(path, message)]


def test_other_transport_sockets_and_matches_are_refused() -> None:
    downstream = URL + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
    tree = bootstrap(name="envoy.transport_sockets.tls", typed_config={"@type": downstream})
    with pytest.raises(ConfigError) as caught:
        load_tree(tree)
    assert caught.value.errors == [
        (
            SOCKET,
            f"transport socket '{downstream.removeprefix(URL)}' {REFUSED} (only an "
            "UpstreamTlsContext)",
        )
    ]
    tree = bootstrap()
    tree["static_resources"]["clusters"][0]["transport_socket_matches"] = [
        {"name": "m", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.tls"}}
    ]
    with pytest.raises(ConfigError) as caught:
        load_tree(tree)
    assert caught.value.errors == [
        ("static_resources.clusters[0].transport_socket_matches", REFUSED)
    ]


# --- load_and_resolve: the bytes ------------------------------------------------------------------


def resolve_errors(tree: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        resolve(load_tree(tree))
    return caught.value.errors


def client_context(certs: Certs, chain: dict[str, str], key: dict[str, str]) -> dict[str, Any]:
    return {
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": chain, "private_key": key}],
            "validation_context": {"trusted_ca": {"filename": certs.cert}},
        }
    }


def test_every_kind_loads(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UDSPROXY_TEST_KEY", Path(certs.key).read_text())
    chain = base64.b64encode(Path(certs.cert).read_bytes()).decode()
    tree = bootstrap(
        client_context(
            certs, {"inline_bytes": chain}, {"environment_variable": "UDSPROXY_TEST_KEY"}
        )
    )
    tree["static_resources"]["clusters"][0]["transport_socket"]["typed_config"][
        "common_tls_context"
    ]["validation_context"]["trusted_ca"] = {"inline_string": Path(certs.cert2).read_text()}
    assert resolve(load_tree(tree)).clusters[0].tls is not None


def test_unset_variable_missing_file_and_not_a_ca(
    certs: Certs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("UDSPROXY_NO_SUCH_VAR", raising=False)
    missing = str(tmp_path / "missing.pem")
    tree = bootstrap(
        client_context(
            certs, {"filename": missing}, {"environment_variable": "UDSPROXY_NO_SUCH_VAR"}
        )
    )
    tree["static_resources"]["clusters"][0]["transport_socket"]["typed_config"][
        "common_tls_context"
    ]["validation_context"]["trusted_ca"] = {"inline_string": "not a certificate"}
    cert0 = f"{COMMON}.tls_certificates[0]"
    assert resolve_errors(tree) == [
        (
            f"{cert0}.certificate_chain.filename",
            f"cannot read '{missing}': No such file or directory",
        ),
        (
            f"{cert0}.private_key.environment_variable",
            "environment variable 'UDSPROXY_NO_SUCH_VAR' is not set",
        ),
        (
            f"{COMMON}.validation_context.trusted_ca.inline_string",
            "the inline_string does not hold a PEM certificate",
        ),
    ]


def test_inline_key_mismatch_names_the_kinds(certs: Certs) -> None:
    tree = bootstrap(
        client_context(
            certs,
            {"inline_string": Path(certs.cert).read_text()},
            {"inline_string": Path(certs.key2).read_text()},
        )
    )
    assert resolve_errors(tree) == [
        (
            f"{COMMON}.tls_certificates[0].private_key.inline_string",
            "the inline_string is not the private key of the inline_string",
        )
    ]
