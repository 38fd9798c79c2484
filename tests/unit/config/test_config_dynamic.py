"""File-based dynamic config: dynamic_resources, CDS/LDS files, v2 forms, resolve()."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from udsproxy.config.convert import REFUSED, route_cluster_refs
from udsproxy.config.dynamic import Resources, load_resources, resolve, resources_from_tree
from udsproxy.config.load import load_and_resolve, load_config, load_tree, parse_yaml
from udsproxy.config.schema import (
    Bootstrap,
    DynamicResources,
    PathConfigSource,
    Pipe,
    SocketAddress,
)
from udsproxy.errors import ConfigError

CORPUS = Path(__file__).parent / "golden" / "corpora"
URL = "type.googleapis.com/"
CLUSTER_URL = URL + "envoy.config.cluster.v3.Cluster"
LISTENER_URL = URL + "envoy.config.listener.v3.Listener"
HCM_URL = URL + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
HCM_PATH = "filter_chains[0].filters[0].typed_config"
ROUTE0 = f"{HCM_PATH}.route_config.virtual_hosts[0].routes[0].route.cluster"


def cluster(name: str = "c", sock: str = "/c.sock", **extra: Any) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"pipe": {"path": sock}}}}
    assignment = {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]}
    return {"name": name, "load_assignment": assignment, **extra}


def listener(name: str = "l", port: int = 8080, to: str = "c", **extra: Any) -> dict[str, Any]:
    route = {"match": {"prefix": "/"}, "route": {"cluster": to}}
    hcm = {
        "@type": HCM_URL,
        "stat_prefix": name,
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route]}]},
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
        **extra,
    }


def cds(*clusters: dict[str, Any], version: str = "1") -> dict[str, Any]:
    return {"version_info": version, "resources": [{"@type": CLUSTER_URL, **c} for c in clusters]}


def lds(*listeners: dict[str, Any], version: str = "1") -> dict[str, Any]:
    resources = [{"@type": LISTENER_URL, **x} for x in listeners]
    return {"version_info": version, "resources": resources}


def write(directory: Path, name: str, tree: object) -> str:
    path = directory / name
    text = json.dumps(tree) if name.endswith(".json") else yaml.safe_dump(tree, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return str(path)


def dynamic_bootstrap(
    cds_path: str | None = None, lds_path: str | None = None, **static: Any
) -> dict[str, Any]:
    tree: dict[str, Any] = {"dynamic_resources": {}}
    if cds_path:
        tree["dynamic_resources"]["cds_config"] = {"path_config_source": {"path": cds_path}}
    if lds_path:
        tree["dynamic_resources"]["lds_config"] = {"path_config_source": {"path": lds_path}}
    if static:
        tree["static_resources"] = static
    return tree


def errors_of(call: Any, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        call(*args, **kwargs)
    return caught.value.errors


def rendered(call: Any, *args: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        call(*args, **kwargs)
    return str(caught.value).splitlines()


# --- the bootstrap's dynamic_resources ------------------------------------------------------------


def test_path_config_source() -> None:
    tree = {
        "node": {"id": "udsproxy-1", "cluster": "edge"},
        "dynamic_resources": {
            "cds_config": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": "/etc/envoy/cds.yaml",
                    "watched_directory": {"path": "/etc/envoy"},
                },
            },
            "lds_config": {
                "resourceApiVersion": "V3",
                "pathConfigSource": {"path": "/etc/envoy/lds.yaml"},
                "initial_fetch_timeout": "5s",  # a file is read at once: it never expires
            },
        },
    }
    bootstrap = load_tree(tree)
    assert bootstrap.dynamic_resources == DynamicResources(
        cds=PathConfigSource(path="/etc/envoy/cds.yaml", watched_directory="/etc/envoy"),
        lds=PathConfigSource(path="/etc/envoy/lds.yaml"),
    )
    assert bootstrap.warnings == ()
    assert (bootstrap.clusters, bootstrap.listeners) == ((), ())
    assert (bootstrap.cds_version, bootstrap.lds_version) == ("", "")


def test_legacy_path_is_deprecated() -> None:
    bootstrap = load_tree({"dynamic_resources": {"cds_config": {"path": "/etc/envoy/cds.yaml"}}})
    assert bootstrap.dynamic_resources == DynamicResources(
        cds=PathConfigSource(path="/etc/envoy/cds.yaml")
    )
    assert bootstrap.warnings == (
        "dynamic_resources.cds_config.path: deprecated in Envoy; use path_config_source.path",
    )


def test_watch_modify_is_accepted() -> None:
    watched = {"path": "/etc/envoy", "watch_modify": True}
    source = {"path_config_source": {"path": "/etc/envoy/lds.yaml", "watched_directory": watched}}
    bootstrap = load_tree({"dynamic_resources": {"lds_config": source}})
    assert bootstrap.dynamic_resources is not None
    assert bootstrap.dynamic_resources.lds == PathConfigSource(
        path="/etc/envoy/lds.yaml", watched_directory="/etc/envoy"
    )


def test_empty_dynamic_resources() -> None:
    assert load_tree({"dynamic_resources": {}}).dynamic_resources == DynamicResources()
    assert load_tree({}).dynamic_resources is None


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (
            {"ads": {}},
            ("dynamic_resources.cds_config.ads", f"{REFUSED} (only path and path_config_source)"),
        ),
        (
            {"api_config_source": {"api_type": "GRPC"}},
            (
                "dynamic_resources.cds_config.api_config_source",
                f"{REFUSED} (only path and path_config_source)",
            ),
        ),
        (
            {"path": "/x", "resource_api_version": "V2"},
            ("dynamic_resources.cds_config.resource_api_version", f"'V2' {REFUSED} (only V3)"),
        ),
        (
            {"path": "/x", "authorities": [{"name": "a"}]},
            (
                "dynamic_resources.cds_config.authorities",
                f"{REFUSED} (only path and path_config_source)",
            ),
        ),
    ],
)
def test_config_source_refusals(config: dict[str, Any], error: tuple[str, str]) -> None:
    assert errors_of(load_tree, {"dynamic_resources": {"cds_config": config}}) == [error]


@pytest.mark.parametrize(
    ("dynamic", "error"),
    [
        ({"ads_config": {"api_type": "GRPC"}}, ("dynamic_resources.ads_config", REFUSED)),
        (
            {"cds_resources_locator": "xdstp://x/y"},
            ("dynamic_resources.cds_resources_locator", REFUSED),
        ),
        (
            {"cds_config": {"initial_fetch_timeout": "1s"}},
            (
                "dynamic_resources.cds_config",
                "one of 'path', 'path_config_source', 'api_config_source', 'ads', 'self' is "
                "required",
            ),
        ),
        (
            {"cds_config": {"path_config_source": {"watched_directory": {"path": "/d"}}}},
            (
                "dynamic_resources.cds_config.path_config_source.path",
                "is required and must not be empty",
            ),
        ),
        (
            {"lds_config": {"path_config_source": {"path": "/x", "watched_directory": {}}}},
            (
                "dynamic_resources.lds_config.path_config_source.watched_directory.path",
                "is required and must not be empty",
            ),
        ),
    ],
)
def test_dynamic_resources_errors(dynamic: dict[str, Any], error: tuple[str, str]) -> None:
    assert errors_of(load_tree, {"dynamic_resources": dynamic}) == [error]


def test_load_config_reads_no_dynamic_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    bootstrap = load_config(dynamic_bootstrap(missing, missing))
    assert bootstrap.dynamic_resources == DynamicResources(
        cds=PathConfigSource(path=missing), lds=PathConfigSource(path=missing)
    )


def test_with_cds_static_routes_may_name_clusters_to_come() -> None:
    tree = dynamic_bootstrap("/etc/envoy/cds.yaml", listeners=[listener(to="from_cds")])
    assert load_tree(tree).listeners[0].name == "l"
    # Without CDS the cluster can only be static.
    tree = dynamic_bootstrap(None, "/etc/envoy/lds.yaml", listeners=[listener(to="from_cds")])
    assert errors_of(load_tree, tree) == [
        (f"static_resources.listeners[0].{ROUTE0}", "unknown cluster 'from_cds'")
    ]


def test_route_cluster_refs_are_the_paths_convert_reports() -> None:
    two_routes = listener(to="x")
    vhost = two_routes["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    vhost["virtual_hosts"][0]["routes"].append({"match": {"path": "/y"}, "route": {"cluster": "y"}})
    tree = {"static_resources": {"listeners": [listener("a", 1), two_routes]}}
    reported = errors_of(load_tree, tree)
    converted = load_tree(dynamic_bootstrap("/cds.yaml", **tree["static_resources"]))
    refs = [
        ref
        for i, x in enumerate(converted.listeners)
        for ref in route_cluster_refs(x, f"static_resources.listeners[{i}]")
    ]
    assert [(path, f"unknown cluster '{name}'") for path, name in refs] == reported


def test_duplicate_static_listener_address() -> None:
    tree = {"static_resources": {"listeners": [listener("a"), listener("b")]}}
    assert errors_of(load_tree, tree) == [
        (
            "static_resources.listeners[1].address",
            "127.0.0.1:8080 is already the address of listener 'a'",
        ),
        (f"static_resources.listeners[0].{ROUTE0}", "unknown cluster 'c'"),
        (f"static_resources.listeners[1].{ROUTE0}", "unknown cluster 'c'"),
    ]


# --- CDS / LDS files ------------------------------------------------------------------------------


def test_load_cds_file(tmp_path: Path) -> None:
    path = write(tmp_path, "cds.yaml", cds(cluster("a"), cluster("b", "@b"), version="7"))
    resources = load_resources(path, "cds")
    assert resources.version_info == "7"
    assert [c.name for c in resources.clusters] == ["a", "b"]
    assert resources.clusters[1].endpoints[0].address == Pipe(path="@b")
    assert (resources.listeners, resources.warnings) == ((), ())


def test_load_lds_file_json(tmp_path: Path) -> None:
    path = write(tmp_path, "lds.json", lds(listener("a", 1), listener("b", 2)))
    resources = load_resources(path, "lds")
    assert [x.name for x in resources.listeners] == ["a", "b"]
    assert resources.listeners[1].address == SocketAddress(address="127.0.0.1", port_value=2)
    assert resources.clusters == ()


def test_version_info_is_optional_and_resources_may_be_empty() -> None:
    assert resources_from_tree({"resources": []}, "cds") == Resources()
    assert resources_from_tree({}, "lds") == Resources()
    assert resources_from_tree({"version_info": "x"}, "lds").version_info == "x"


def test_type_url_and_grpc_bookkeeping() -> None:
    tree = {
        **cds(cluster()),
        "type_url": CLUSTER_URL,
        "nonce": "n",
        "control_plane": {"identifier": "i"},
    }
    assert len(resources_from_tree(tree, "cds").clusters) == 1
    assert errors_of(resources_from_tree, {"type_url": LISTENER_URL}, "cds", "f") == [
        ("f: type_url", f"expected '{CLUSTER_URL}' in a CDS file")
    ]
    assert errors_of(resources_from_tree, {"canary": True}, "cds", "f") == [("f: canary", REFUSED)]


def test_corpus_lds_file_loads() -> None:
    resources = load_resources(CORPUS / "dynamic-config-fs-lds.yaml", "lds")
    [only] = resources.listeners
    assert only.name == "listener_0"
    assert only.address == SocketAddress(address="0.0.0.0", port_value=10000)
    [vhost] = only.http_connection_manager.route_config.virtual_hosts
    assert vhost.routes[0].route.cluster == "example_proxy_cluster"
    assert resources.version_info == ""


def test_corpus_cds_file_loads_its_strict_dns_cluster() -> None:
    path = str(CORPUS / "dynamic-config-fs-cds.yaml")
    (cluster,) = load_resources(path, "cds").clusters
    assert (cluster.name, cluster.type) == ("example_proxy_cluster", "STRICT_DNS")
    assert cluster.endpoints[0].address == SocketAddress(address="service1", port_value=8080)


def test_corpus_bootstrap_is_not_a_resource_file() -> None:
    path = str(CORPUS / "dynamic-config-fs-envoy.yaml")
    assert errors_of(load_resources, path, "cds") == [
        (f"{path}: node", "unknown field 'node': this is a bootstrap, not an xDS resource file")
    ]


def test_corpus_bootstrap_dynamic_resources() -> None:
    # admin is refused, but dynamic_resources is read (with the legacy 'path' form).
    tree = parse_yaml((CORPUS / "dynamic-config-fs-envoy.yaml").read_text(encoding="utf-8"))
    del tree["admin"]
    bootstrap = load_tree(tree)
    assert bootstrap.dynamic_resources == DynamicResources(
        cds=PathConfigSource(path="/var/lib/envoy/cds.yaml"),
        lds=PathConfigSource(path="/var/lib/envoy/lds.yaml"),
    )
    assert len(bootstrap.warnings) == 2


def test_every_error_at_once_prefixed_by_the_file(tmp_path: Path) -> None:
    bad_cluster = cluster("a", connect_timeout="200ms")
    tree = {
        "version_info": 3,
        "resources": [
            {"@type": CLUSTER_URL, **bad_cluster},
            {"@type": LISTENER_URL, **listener()},
            {"name": "no_type"},
            "text",
            {"@type": CLUSTER_URL, **cluster("b", ring_hash_lb_config={})},
        ],
    }
    path = write(tmp_path, "cds.yaml", tree)
    assert errors_of(load_resources, path, "cds") == [
        (f"{path}: version_info", "expected a string, got int 3"),
        (
            f"{path}: resources[0].connect_timeout",
            "invalid duration '200ms': must end with a single 's' (write '0.2s')",
        ),
        (
            f"{path}: resources[1].@type",
            f"expected '{CLUSTER_URL}' in a CDS file, got '{LISTENER_URL}'",
        ),
        (f"{path}: resources[2]", f"missing '@type' (expected '{CLUSTER_URL}')"),
        (f"{path}: resources[3]", "expected a mapping with '@type', got string 'text'"),
        (f"{path}: resources[4].ring_hash_lb_config", REFUSED),
    ]


def test_duplicates_within_a_file() -> None:
    tree = cds(cluster("a"), cluster("a"))
    assert errors_of(resources_from_tree, tree, "cds", "cds.yaml") == [
        ("cds.yaml: resources[1].name", "duplicate cluster name 'a'")
    ]
    tree = lds(listener("a", 1), listener("a", 2), listener("b", 1))
    assert errors_of(resources_from_tree, tree, "lds", "lds.yaml") == [
        ("lds.yaml: resources[1].name", "duplicate listener name 'a'"),
        ("lds.yaml: resources[2].address", "127.0.0.1:1 is already the address of listener 'a'"),
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "the file is empty (an update that removes every resource is 'resources: []')"),
        ("- a\n", "expected a mapping with 'resources' at the top level, got a list"),
    ],
)
def test_not_a_resource_file(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "cds.yaml"
    path.write_text(text, encoding="utf-8")
    assert errors_of(load_resources, path, "cds") == [(str(path), error)]


def test_file_syntax_and_read_errors(tmp_path: Path) -> None:
    path = tmp_path / "lds.yaml"
    path.write_text("resources:\n  - [\n", encoding="utf-8")
    [(where, message)] = errors_of(load_resources, path, "lds")
    assert where == f"{path}:3:1"
    assert message.startswith("YAML syntax error")
    missing = tmp_path / "missing.yaml"
    assert errors_of(load_resources, missing, "lds") == [
        (str(missing), "cannot read the LDS file: No such file or directory")
    ]


def test_resources_as_a_single_mapping() -> None:
    tree = {"resources": {"@type": CLUSTER_URL, **cluster("a")}}
    assert [c.name for c in resources_from_tree(tree, "cds").clusters] == ["a"]


def test_input_tree_is_not_modified() -> None:
    tree = cds(cluster())
    before = json.dumps(tree)
    resources_from_tree(tree, "cds")
    assert json.dumps(tree) == before


# --- v2 forms -------------------------------------------------------------------------------------

V2_LDS = """\
version_info: "0"
resources:
- "@type": type.googleapis.com/envoy.api.v2.Listener
  name: listener_0
  address: {socket_address: {address: 0.0.0.0, port_value: 10000}}
  filter_chains:
  - filters:
    - name: envoy.http_connection_manager
      config:
        stat_prefix: ingress_http
        access_log:
        - name: envoy.file_access_log
          config: {path: /dev/stdout}
        route_config:
          virtual_hosts:
          - {name: hugo, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: hugo}}]}
        http_filters:
        - name: envoy.router
"""
V2_CDS = """\
version_info: "0"
resources:
- "@type": type.googleapis.com/envoy.api.v2.Cluster
  name: hugo
  connect_timeout: 0.25s
  type: STATIC
  lb_policy: ROUND_ROBIN
  load_assignment:
    cluster_name: hugo
    endpoints:
    - lb_endpoints:
      - endpoint: {address: {pipe: {path: /dev/shm/hugo.sock}}}
- "@type": type.googleapis.com/envoy.api.v2.Cluster
  name: hosts
  hosts: [{pipe: {path: /dev/shm/a.sock}}, {socket_address: {address: 127.0.0.1, port_value: 80}}]
"""


def v2_warning(path: str, old: str, new: str) -> str:
    return f"{path}: deprecated v2 form '{old}' read as '{new}'"


def test_v2_lds_file() -> None:
    resources = resources_from_tree(parse_yaml(V2_LDS), "lds", "lds.yaml")
    hcm = "resources[0].filter_chains[0].filters[0]"
    assert resources.warnings == (
        "lds.yaml: "
        + v2_warning(
            "resources[0].@type",
            URL + "envoy.api.v2.Listener",
            URL + "envoy.config.listener.v3.Listener",
        ),
        "lds.yaml: " + v2_warning(f"{hcm}.config", "config", "typed_config"),
        "lds.yaml: "
        + v2_warning(
            f"{hcm}.typed_config.http_filters[0].name", "envoy.router", "envoy.filters.http.router"
        ),
        "lds.yaml: "
        + v2_warning(f"{hcm}.typed_config.access_log[0].config", "config", "typed_config"),
    )
    [only] = resources.listeners
    assert only.http_connection_manager.access_log[0].path == "/dev/stdout"
    assert only.http_connection_manager.stat_prefix == "ingress_http"
    assert resources.version_info == "0"


def test_v2_typed_config_types() -> None:
    text = V2_LDS.replace(
        "config:\n        stat_prefix",
        "typed_config:\n        '@type': type.googleapis.com/envoy.config.filter.network."
        "http_connection_manager.v2.HttpConnectionManager\n        stat_prefix",
    ).replace(
        "config: {path: /dev/stdout}",
        "typed_config: {'@type': type.googleapis.com/envoy.config.accesslog.v2.FileAccessLog,"
        " path: /dev/stdout, format: '%START_TIME%'}",
    )
    resources = resources_from_tree(parse_yaml(text), "lds", "f")
    assert [w.split(": deprecated")[0] for w in resources.warnings] == [
        "f: resources[0].@type",
        "f: resources[0].filter_chains[0].filters[0].typed_config.@type",
        "f: resources[0].filter_chains[0].filters[0].typed_config.http_filters[0].name",
        "f: resources[0].filter_chains[0].filters[0].typed_config.access_log[0].typed_config.@type",
        "f: resources[0].filter_chains[0].filters[0].typed_config.access_log[0].typed_config."
        "format",
    ]
    assert resources.listeners[0].http_connection_manager.access_log[0].text_format == (
        "%START_TIME%"
    )


def test_v2_cds_file_with_hosts() -> None:
    resources = resources_from_tree(parse_yaml(V2_CDS), "cds", "cds.yaml")
    assert [c.name for c in resources.clusters] == ["hugo", "hosts"]
    assert [e.address for e in resources.clusters[1].endpoints] == [
        Pipe(path="/dev/shm/a.sock"),
        SocketAddress(address="127.0.0.1", port_value=80),
    ]
    cluster_v2, cluster_v3 = URL + "envoy.api.v2.Cluster", CLUSTER_URL
    assert resources.warnings == (
        "cds.yaml: " + v2_warning("resources[0].@type", cluster_v2, cluster_v3),
        "cds.yaml: " + v2_warning("resources[1].@type", cluster_v2, cluster_v3),
        "cds.yaml: "
        + v2_warning(
            "resources[1].hosts",
            "hosts",
            "load_assignment.endpoints[0].lb_endpoints[*].endpoint.address",
        ),
    )


def test_other_v2_forms_fail_validation() -> None:
    text = """\
resources:
- "@type": type.googleapis.com/envoy.api.v2.Cluster
  name: a
  type: static
  tls_context: {}
  hosts: [{pipe: {path: /a.sock}}]
  load_assignment: {cluster_name: a}
- "@type": type.googleapis.com/envoy.api.v2.ClusterLoadAssignment
  cluster_name: b
"""
    # (type: static is fine: Envoy reads enum values case-insensitively)
    assert errors_of(resources_from_tree, parse_yaml(text), "cds", "f") == [
        ("f: resources[0].tls_context", "unknown field 'tls_context'"),
        ("f: resources[0].hosts", "unknown field 'hosts'"),
        (
            "f: resources[1].@type",
            f"expected '{CLUSTER_URL}' in a CDS file, got "
            f"'{URL}envoy.api.v2.ClusterLoadAssignment'",
        ),
    ]


def test_v2_forms_in_the_bootstrap() -> None:
    text = """\
static_resources:
  listeners:
  - address: {socket_address: {address: 0.0.0.0, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.http_connection_manager
        config:
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - {name: hugo, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: hugo}}]}
          http_filters: [{name: envoy.router, config: {}}]
  clusters:
  - name: hugo
    hosts: [{pipe: {path: /dev/shm/hugo.sock}}]
"""
    bootstrap = load_tree(parse_yaml(text))
    hcm = "static_resources.listeners[0].filter_chains[0].filters[0]"
    assert bootstrap.warnings == (
        v2_warning(f"{hcm}.config", "config", "typed_config"),
        v2_warning(f"{hcm}.typed_config.http_filters[0].config", "config", "typed_config"),
        v2_warning(
            "static_resources.clusters[0].hosts",
            "hosts",
            "load_assignment.endpoints[0].lb_endpoints[*].endpoint.address",
        ),
    )
    assert bootstrap.clusters[0].endpoints[0].address == Pipe(path="/dev/shm/hugo.sock")
    assert bootstrap.listeners[0].http_connection_manager.stat_prefix == "ingress_http"


def test_v2_config_beside_typed_config_is_not_mapped() -> None:
    tree = lds(listener())
    tree["resources"][0]["filter_chains"][0]["filters"][0]["config"] = {}
    assert errors_of(resources_from_tree, tree, "lds", "f") == [
        ("f: resources[0].filter_chains[0].filters[0].config", "unknown field 'config'")
    ]


def test_v3_names_with_typed_config_are_labels() -> None:
    tree = lds(listener())
    tree["resources"][0]["filter_chains"][0]["filters"][0]["name"] = "envoy.http_connection_manager"
    assert resources_from_tree(tree, "lds").warnings == ()


# --- resolve --------------------------------------------------------------------------------------


def test_resolve_merges_the_files(tmp_path: Path) -> None:
    cds_path = write(tmp_path, "cds.yaml", cds(cluster("dyn"), version="c7"))
    lds_path = write(tmp_path, "lds.yaml", lds(listener("dl", 2, to="static"), version="l3"))
    tree = dynamic_bootstrap(
        cds_path, lds_path, listeners=[listener("sl", 1, to="dyn")], clusters=[cluster("static")]
    )
    static = load_config(tree)
    merged = resolve(static)
    assert [c.name for c in merged.clusters] == ["static", "dyn"]
    assert [x.name for x in merged.listeners] == ["sl", "dl"]
    assert (merged.cds_version, merged.lds_version) == ("c7", "l3")
    assert merged.dynamic_resources == static.dynamic_resources
    assert load_and_resolve(tree) == merged
    config = write(tmp_path, "envoy.yaml", tree)
    assert load_and_resolve(config) == merged


def test_resolving_a_resolved_bootstrap_starts_from_its_static_part(tmp_path: Path) -> None:
    cds_path = write(tmp_path, "cds.yaml", cds(cluster("one"), version="1"))
    static = load_config(dynamic_bootstrap(cds_path, clusters=[cluster("static")]))
    first = resolve(static)
    assert first.static is static
    assert resolve(first) == first
    assert load_and_resolve(first) == first
    write(tmp_path, "cds.yaml", cds(cluster("two"), version="2"))  # the file changed
    second = resolve(first)
    assert [c.name for c in second.clusters] == ["static", "two"]
    assert second.cds_version == "2"
    assert second.static is static
    assert len(second.warnings) == len(static.warnings)


def test_resolve_merges_warnings(tmp_path: Path) -> None:
    cds_path = write(tmp_path, "cds.yaml", parse_yaml(V2_CDS))
    tree = dynamic_bootstrap(None, None)
    tree["dynamic_resources"]["cds_config"] = {"path": cds_path}
    merged = load_and_resolve(tree)
    assert merged.warnings[0].startswith("dynamic_resources.cds_config.path: deprecated in Envoy")
    assert merged.warnings[1].startswith(f"{cds_path}: resources[0].@type: deprecated v2 form")
    assert len(merged.warnings) == 4


def test_resolve_without_dynamic_resources() -> None:
    static = load_config({"static_resources": {"clusters": [cluster()]}})
    assert resolve(static) == static
    assert resolve(Bootstrap()) == Bootstrap()


def test_resolve_uses_given_resources(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.yaml")
    static = load_config(dynamic_bootstrap(missing, missing))
    given = resources_from_tree(cds(cluster("x"), version="9"), "cds")
    merged = resolve(static, cds=given, lds=Resources())
    assert [c.name for c in merged.clusters] == ["x"]
    assert (merged.cds_version, merged.lds_version) == ("9", "")


def test_cds_cannot_replace_a_static_cluster(tmp_path: Path) -> None:
    cds_path = write(tmp_path, "cds.yaml", cds(cluster("new"), cluster("static")))
    tree = dynamic_bootstrap(cds_path, clusters=[cluster("static")])
    assert errors_of(load_and_resolve, tree) == [
        (
            f"{cds_path}: resources[1].name",
            "cluster 'static' is a static cluster: CDS cannot replace it",
        )
    ]


def test_lds_cannot_replace_a_static_listener_or_take_its_address(tmp_path: Path) -> None:
    tree = lds(listener("static", 2), listener("other", 1))
    lds_path = write(tmp_path, "lds.yaml", tree)
    bootstrap = dynamic_bootstrap(
        None, lds_path, listeners=[listener("static", 1)], clusters=[cluster()]
    )
    assert errors_of(load_and_resolve, bootstrap) == [
        (
            f"{lds_path}: resources[0].name",
            "listener 'static' is a static listener: LDS cannot replace it",
        ),
        (
            f"{lds_path}: resources[1].address",
            "127.0.0.1:1 is already the address of listener 'static'",
        ),
    ]


def test_routes_are_checked_against_the_merged_clusters(tmp_path: Path) -> None:
    cds_path = write(tmp_path, "cds.yaml", cds(cluster("dyn")))
    files = lds(listener("ok", 2, to="dyn"), listener("bad", 3, to="nope"))
    lds_path = write(tmp_path, "lds.yaml", files)
    tree = dynamic_bootstrap(cds_path, lds_path, listeners=[listener("s", 1, to="gone")])
    assert errors_of(load_and_resolve, tree) == [
        (f"static_resources.listeners[0].{ROUTE0}", "unknown cluster 'gone'"),
        (f"{lds_path}: resources[1].{ROUTE0}", "unknown cluster 'nope'"),
    ]


def test_missing_paths_at_load_time(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    watched = {"path": missing, "watched_directory": {"path": str(tmp_path / "nodir")}}
    tree = {
        "dynamic_resources": {
            "cds_config": {"path": missing},
            "lds_config": {"path_config_source": watched},
        }
    }
    must = "the path to the source must exist at config load time"
    assert errors_of(load_and_resolve, tree) == [
        ("dynamic_resources.cds_config", f"'{missing}' does not exist ({must})"),
        ("dynamic_resources.lds_config", f"'{missing}' does not exist ({must})"),
        (
            "dynamic_resources.lds_config",
            f"watched_directory '{tmp_path / 'nodir'}' is not a directory",
        ),
    ]


def test_file_errors_hold_back_the_cross_checks(tmp_path: Path) -> None:
    cds_path = write(tmp_path, "cds.yaml", cds(cluster("a", connect_timeout="1")))
    lds_path = write(tmp_path, "lds.yaml", lds(listener(to="nope")))
    tree = dynamic_bootstrap(cds_path, lds_path)
    assert errors_of(load_and_resolve, tree) == [
        (
            f"{cds_path}: resources[0].connect_timeout",
            "invalid duration '1': expected seconds ending in 's', e.g. '5s'",
        )
    ]


def test_relative_paths_are_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "cds.yaml", cds(cluster()))
    monkeypatch.chdir(tmp_path)
    assert [c.name for c in load_and_resolve(dynamic_bootstrap("cds.yaml")).clusters] == ["c"]


def test_corpus_dynamic_config(tmp_path: Path) -> None:
    """The corpus lds.yaml, with a STATIC cds.yaml in place of its STRICT_DNS one."""
    lds_path = tmp_path / "lds.yaml"
    shutil.copy(CORPUS / "dynamic-config-fs-lds.yaml", lds_path)
    cds_path = write(tmp_path, "cds.yaml", cds(cluster("example_proxy_cluster")))
    tree = dynamic_bootstrap(cds_path, str(lds_path))
    merged = load_and_resolve(tree)
    assert [x.name for x in merged.listeners] == ["listener_0"]
    assert [c.name for c in merged.clusters] == ["example_proxy_cluster"]
