"""TLS on listeners: DownstreamTlsContext and SNI filter chains (convert), certificate files
(load_and_resolve / dynamic.tls_errors)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Certs

from udsproxy.config.convert import REFUSED
from udsproxy.config.dynamic import resolve, tls_errors
from udsproxy.config.load import load_and_resolve, load_tree
from udsproxy.config.schema import DataSource, DownstreamTls, TlsCertificate
from udsproxy.errors import ConfigError

URL = "type.googleapis.com/"
TLS_URL = URL + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
HCM_URL = URL + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
CHAINS = "static_resources.listeners[0].filter_chains"
CONTEXT = "transport_socket.typed_config"
COMMON = f"{CONTEXT}.common_tls_context"
CERT0 = f"{COMMON}.tls_certificates[0]"


def hcm(stat_prefix: str = "s") -> dict[str, Any]:
    route = {"match": {"prefix": "/"}, "route": {"cluster": "c"}}
    return {
        "@type": HCM_URL,
        "stat_prefix": stat_prefix,
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route]}]},
    }


def tls_context(
    chain: str = "/certs/a.crt", key: str = "/certs/a.key", **common: Any
) -> dict[str, Any]:
    certificate = {"certificate_chain": {"filename": chain}, "private_key": {"filename": key}}
    return {
        "@type": TLS_URL,
        "common_tls_context": {"tls_certificates": [certificate], **common},
    }


def chain(
    server_names: list[str] | None = None, context: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm()}
        ]
    }
    if context is not None:
        out["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": context}
    if server_names is not None:
        out["filter_chain_match"] = {"server_names": server_names}
    return {**out, **extra}


def bootstrap(*chains: dict[str, Any], **listener: Any) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"pipe": {"path": "/c.sock"}}}}
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "https",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8443}},
                    "filter_chains": list(chains),
                    **listener,
                }
            ],
            "clusters": [
                {
                    "name": "c",
                    "load_assignment": {
                        "cluster_name": "c",
                        "endpoints": [{"lb_endpoints": [endpoint]}],
                    },
                }
            ],
        }
    }


def file(path: str) -> DataSource:
    return DataSource(kind="filename", value=path)


def tls_of(tree: dict[str, Any]) -> DownstreamTls | None:
    return load_tree(tree).listeners[0].tls


def errors_of(tree: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_tree(tree)
    return caught.value.errors


# --- convert: the shape ---------------------------------------------------------------------------


def test_one_tls_chain() -> None:
    tls = tls_of(bootstrap(chain(context=tls_context(alpn_protocols=["http/1.1"]))))
    assert tls == DownstreamTls(
        certificates=(
            TlsCertificate(
                certificate_chain=file("/certs/a.crt"), private_key=file("/certs/a.key")
            ),
        ),
        alpn_protocols=("http/1.1",),
    )


def test_no_alpn_means_none_is_offered() -> None:
    # Envoy: "If empty, Envoy will not expose ALPN."
    tls = tls_of(bootstrap(chain(context=tls_context())))
    assert tls is not None
    assert tls.alpn_protocols == ()


def test_plain_text_listener_has_no_tls() -> None:
    assert tls_of(bootstrap(chain())) is None


def test_sni_chains() -> None:
    tree = bootstrap(
        chain(["a.example", "*.a.example"], tls_context("/a.crt", "/a.key")),
        chain(["b.example"], tls_context("/b.crt", "/b.key")),
        chain(None, tls_context("/default.crt", "/default.key")),
        listener_filters=[
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {
                    "@type": URL + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
                },
            }
        ],
    )
    tree["static_resources"]["listeners"][0]["filter_chains"][1]["filter_chain_match"][
        "transport_protocol"
    ] = "tls"
    listener = load_tree(tree).listeners[0]
    assert listener.tls == DownstreamTls(
        certificates=(
            TlsCertificate(
                certificate_chain=file("/a.crt"),
                private_key=file("/a.key"),
                server_names=("a.example", "*.a.example"),
            ),
            TlsCertificate(
                certificate_chain=file("/b.crt"),
                private_key=file("/b.key"),
                server_names=("b.example",),
            ),
            TlsCertificate(
                certificate_chain=file("/default.crt"), private_key=file("/default.key")
            ),
        ),
        alpn_protocols=(),
    )
    assert (
        listener.http_connection_manager
        == load_tree(bootstrap(chain())).listeners[0].http_connection_manager
    )


def test_tls_inspector_by_name() -> None:
    tree = bootstrap(
        chain(context=tls_context()),
        listener_filters=[{"name": "envoy.filters.listener.tls_inspector"}],
    )
    assert tls_of(tree) is not None


def test_chains_must_share_their_http_connection_manager() -> None:
    other = chain(["b.example"], tls_context())
    other["filters"][0]["typed_config"] = hcm("other")
    tree = bootstrap(chain(["a.example"], tls_context()), other)
    assert errors_of(tree) == [
        (f"{CHAINS}[1]", f"filter chains with different http_connection_manager {REFUSED}")
    ]


def test_chain_names_are_labels() -> None:
    tree = bootstrap(chain(["a"], tls_context(), name="a"), chain(None, tls_context(), name="d"))
    tls = tls_of(tree)
    assert tls is not None
    assert len(tls.certificates) == 2


@pytest.mark.parametrize(
    ("chains", "errors"),
    [
        (
            [chain(["a"], tls_context()), chain(["b"])],
            [
                (
                    f"{CHAINS}[1]",
                    f"a plain-text filter chain beside TLS ones {REFUSED} (either every filter "
                    "chain has a TLS transport_socket or none)",
                ),
                (
                    f"{CHAINS}[1].filter_chain_match.server_names",
                    f"{REFUSED} (SNI needs a TLS transport_socket)",
                ),
            ],
        ),
        (
            [chain(None, tls_context()), chain([], tls_context())],
            [
                (
                    f"{CHAINS}[1]",
                    "the same filter_chain_match as filter_chains[0] (only one chain may have no "
                    "server_names)",
                )
            ],
        ),
        (
            [chain(["a", "b"], tls_context()), chain(["c", "b"], tls_context())],
            [
                (
                    f"{CHAINS}[1].filter_chain_match.server_names[1]",
                    "'b' is already matched by filter_chains[0]",
                )
            ],
        ),
        (
            [chain(["a"])],
            [
                (
                    f"{CHAINS}[0].filter_chain_match.server_names",
                    f"{REFUSED} (SNI needs a TLS transport_socket)",
                )
            ],
        ),
        (
            [chain(["a"], tls_context(alpn_protocols=["http/1.1"])), chain(None, tls_context())],
            [
                (
                    f"{CHAINS}[1].{COMMON}.alpn_protocols",
                    f"alpn_protocols different from the first filter chain's {REFUSED}",
                )
            ],
        ),
        (
            [chain(), chain()],
            [
                (
                    "static_resources.listeners[0].filter_chains",
                    f"more than one filter chain {REFUSED}",
                )
            ],
        ),
    ],
)
def test_filter_chain_rules(chains: list[dict[str, Any]], errors: list[tuple[str, str]]) -> None:
    assert errors_of(bootstrap(*chains)) == errors


def with_context(change: Any) -> dict[str, Any]:
    context = tls_context()
    change(context)
    return bootstrap(chain(context=context))


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (
            lambda c: c["common_tls_context"].update(alpn_protocols=["h2", "http/1.1"]),
            f"{COMMON}.alpn_protocols[0]",
            f"'h2' {REFUSED} (only http/1.1)",
        ),
        (
            lambda c: c.update(require_client_certificate=True),
            f"{CONTEXT}.require_client_certificate",
            f"true {REFUSED}",
        ),
        (lambda c: c.update(require_sni=True), f"{CONTEXT}.require_sni", f"true {REFUSED}"),
        (lambda c: c.update(session_timeout="60s"), f"{CONTEXT}.session_timeout", REFUSED),
        (
            lambda c: c.update(disable_stateless_session_resumption=True),
            f"{CONTEXT}.disable_stateless_session_resumption",
            REFUSED,
        ),
        (
            lambda c: c["common_tls_context"].update(
                tls_params={"tls_minimum_protocol_version": "TLSv1_3"}
            ),
            f"{COMMON}.tls_params",
            REFUSED,
        ),
        (
            lambda c: c["common_tls_context"].update(
                tls_certificate_sds_secret_configs=[{"name": "s"}]
            ),
            f"{COMMON}.tls_certificate_sds_secret_configs",
            REFUSED,
        ),
        (
            lambda c: c["common_tls_context"].update(
                validation_context={"trusted_ca": {"filename": "/ca.pem"}}
            ),
            f"{COMMON}.validation_context",
            REFUSED,
        ),
        (
            lambda c: c["common_tls_context"]["tls_certificates"][0].update(
                private_key={"inline_bytes": "not base64!"}
            ),
            f"{CERT0}.private_key.inline_bytes",
            "is not valid base64",
        ),
        (
            lambda c: c["common_tls_context"]["tls_certificates"][0].update(
                password={"filename": "/pw"}
            ),
            f"{CERT0}.password",
            REFUSED,
        ),
        (
            lambda c: c["common_tls_context"]["tls_certificates"].append(
                copy.deepcopy(c["common_tls_context"]["tls_certificates"][0])
            ),
            f"{COMMON}.tls_certificates[1]",
            f"more than one certificate per filter chain {REFUSED}",
        ),
        (
            lambda c: c["common_tls_context"].update(tls_certificates=[]),
            f"{COMMON}.tls_certificates",
            "one certificate is required",
        ),
        (
            lambda c: c["common_tls_context"]["tls_certificates"][0].pop("private_key"),
            f"{CERT0}.private_key",
            "is required",
        ),
    ],
)
def test_tls_context_refusals(change: Any, path: str, message: str) -> None:
    assert errors_of(with_context(change)) == [(f"{CHAINS}[0].{path}", message)]


def test_false_client_certificate_and_sni_requirements_are_the_default() -> None:
    tree = with_context(lambda c: c.update(require_client_certificate=False, require_sni=False))
    assert tls_of(tree) is not None


def test_other_transport_sockets_are_refused() -> None:
    upstream = {"@type": URL + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}
    assert errors_of(bootstrap(chain(context=upstream))) == [
        (
            f"{CHAINS}[0].transport_socket",
            f"transport socket '{upstream['@type'].removeprefix(URL)}' {REFUSED} (only a "
            "DownstreamTlsContext)",
        )
    ]
    tree = bootstrap(chain(context=tls_context()))
    del tree["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"][
        "typed_config"
    ]
    assert errors_of(tree) == [
        (
            f"{CHAINS}[0].transport_socket",
            f"transport socket 'envoy.transport_sockets.tls' {REFUSED} (only a "
            "DownstreamTlsContext)",
        )
    ]


def test_filter_chain_match_refusals() -> None:
    tree = bootstrap(
        chain(["a"], tls_context()),
        chain(None, tls_context(), filter_chain_match={"application_protocols": ["h2"]}),
    )
    assert errors_of(tree) == [(f"{CHAINS}[1].filter_chain_match.application_protocols", REFUSED)]
    tree = bootstrap(chain(None, filter_chain_match={"transport_protocol": "raw_buffer"}))
    assert errors_of(tree) == [
        (
            f"{CHAINS}[0].filter_chain_match.transport_protocol",
            f"'raw_buffer' {REFUSED} (only 'tls' is matched)",
        )
    ]
    # matching TLS on a chain that does not terminate it (issue 8: a message that does not
    # contradict itself, "'tls' not supported (only tls, ...)" did)
    tree = bootstrap(chain(None, filter_chain_match={"transport_protocol": "tls"}))
    assert errors_of(tree) == [
        (
            f"{CHAINS}[0].filter_chain_match.transport_protocol",
            "TLS passthrough (a chain that matches 'tls' without a TLS transport_socket) "
            + REFUSED,
        )
    ]


def test_other_listener_filters_are_refused() -> None:
    original_dst = {"name": "envoy.filters.listener.original_dst"}
    tree = bootstrap(chain(context=tls_context()), listener_filters=[original_dst])
    assert errors_of(tree) == [
        (
            "static_resources.listeners[0].listener_filters[0]",
            f"listener filter 'envoy.filters.listener.original_dst' {REFUSED}",
        )
    ]


def test_the_article_era_tls_context_is_not_mapped() -> None:
    tree = bootstrap(chain(tls_context={"common_tls_context": {}}))
    assert errors_of(tree) == [(f"{CHAINS}[0].tls_context", "unknown field 'tls_context'")]


# --- the certificate files (I/O) ------------------------------------------------------------------


def real(certs: Certs, *chains: tuple[list[str] | None, str, str]) -> dict[str, Any]:
    return bootstrap(*(chain(names, tls_context(c, k)) for names, c, k in chains))


def resolve_errors(tree: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_and_resolve(tree)
    return caught.value.errors


def test_certificates_load(certs: Certs) -> None:
    tree = real(certs, (["b.example"], certs.cert2, certs.key2), (None, certs.cert, certs.key))
    bootstrap_ = load_and_resolve(tree)
    tls = bootstrap_.listeners[0].tls
    assert tls is not None
    assert [c.certificate_chain.value for c in tls.certificates] == [certs.cert2, certs.cert]


def test_missing_certificate_files(certs: Certs, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    tree = real(certs, (["a"], missing, certs.key), (None, certs.cert, missing))
    assert resolve_errors(tree) == [
        (
            f"{CHAINS}[0].{CERT0}.certificate_chain.filename",
            f"cannot read '{missing}': No such file or directory",
        ),
        (
            f"{CHAINS}[1].{CERT0}.private_key.filename",
            f"cannot read '{missing}': No such file or directory",
        ),
    ]


def test_key_of_another_certificate(certs: Certs) -> None:
    assert resolve_errors(real(certs, (None, certs.cert, certs.key2))) == [
        (
            f"{CHAINS}[0].{CERT0}.private_key.filename",
            f"'{certs.key2}' is not the private key of '{certs.cert}'",
        )
    ]


def test_not_pem(certs: Certs) -> None:
    assert resolve_errors(real(certs, (None, certs.junk, certs.key))) == [
        (
            f"{CHAINS}[0].{CERT0}.certificate_chain.filename",
            f"'{certs.junk}' does not hold a PEM certificate",
        )
    ]
    assert resolve_errors(real(certs, (None, certs.cert, certs.cert))) == [
        (
            f"{CHAINS}[0].{CERT0}.private_key.filename",
            f"'{certs.cert}' does not hold a PEM private key",
        )
    ]


def test_corrupt_pem(certs: Certs, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.crt"
    corrupt.write_text(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", encoding="utf-8"
    )
    [(path, message)] = resolve_errors(real(certs, (None, str(corrupt), certs.key)))
    assert path == f"{CHAINS}[0].{CERT0}"
    assert message.startswith(f"'{corrupt}' and '{certs.key}' do not load: ")


def test_encrypted_key_is_refused_without_a_prompt(certs: Certs) -> None:
    assert resolve_errors(real(certs, (None, certs.cert, certs.encrypted_key))) == [
        (
            f"{CHAINS}[0].{CERT0}.private_key.filename",
            f"'{certs.encrypted_key}' is encrypted: encrypted private keys {REFUSED}",
        )
    ]


def test_load_config_does_not_read_certificates() -> None:
    tls = tls_of(bootstrap(chain(context=tls_context("/nowhere.crt", "/nowhere.key"))))
    assert tls is not None


def test_lds_listener_certificates_are_checked(certs: Certs, tmp_path: Path) -> None:
    listener = bootstrap(chain(context=tls_context(certs.cert, certs.key2)))["static_resources"][
        "listeners"
    ][0]
    lds = {"resources": [{"@type": URL + "envoy.config.listener.v3.Listener", **listener}]}
    lds_path = tmp_path / "lds.yaml"
    lds_path.write_text(yaml.safe_dump(lds), encoding="utf-8")
    tree = bootstrap(chain(context=tls_context(certs.cert, certs.key)))
    tree["static_resources"]["listeners"] = []
    tree["dynamic_resources"] = {"lds_config": {"path_config_source": {"path": str(lds_path)}}}
    with pytest.raises(ConfigError) as caught:
        load_and_resolve(tree)
    assert caught.value.errors == [
        (
            f"{lds_path}: resources[0].filter_chains[0].{CERT0}.private_key.filename",
            f"'{certs.key2}' is not the private key of '{certs.cert}'",
        )
    ]


def test_tls_errors_of_one_listener(certs: Certs) -> None:
    listener = load_tree(real(certs, (None, certs.cert, certs.key))).listeners[0]
    assert tls_errors(listener) == []
    assert resolve(load_tree(real(certs, (None, certs.cert, certs.key)))).listeners == (listener,)
