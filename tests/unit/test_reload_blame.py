"""Which dynamic source a rejected update counts against (update_rejected). Pure."""

from __future__ import annotations

from udsproxy.config import schema
from udsproxy.errors import ConfigError
from udsproxy.server import _blamed

DYN = schema.DynamicResources(
    cds=schema.PathConfigSource(path="/etc/udsproxy/cds.yaml"),
    lds=schema.PathConfigSource(path="/etc/udsproxy/lds.yaml"),
)
BOTH = ["cds", "lds"]


def test_the_file_named_by_the_errors_is_blamed() -> None:
    bad_cds = ConfigError([("/etc/udsproxy/cds.yaml: resources[0].conect_timeout", "unknown")])
    assert _blamed(bad_cds, DYN, BOTH) == ["cds"]
    bad_lds = ConfigError([("/etc/udsproxy/lds.yaml: resources[1].address", "in use")])
    assert _blamed(bad_lds, DYN, BOTH) == ["lds"]
    missing = FileNotFoundError(2, "No such file or directory", "/etc/udsproxy/lds.yaml")
    assert _blamed(missing, DYN, BOTH) == ["lds"]


def test_errors_elsewhere_count_against_every_source() -> None:
    bootstrap = ConfigError([("static_resources.clusters[0].name", "duplicate")])
    assert _blamed(bootstrap, DYN, BOTH) == BOTH
    assert _blamed(bootstrap, None, []) == BOTH  # no dynamic source: both managers count it
