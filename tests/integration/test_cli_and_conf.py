"""The shipped files (conf/) and the command line as an operator uses them."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from udsproxy import __version__

from .support import (
    REPO,
    AccessLog,
    NginxInstance,
    ProxyProcess,
    find_nginx,
    get,
    require,
    single_route_config,
)

pytestmark = pytest.mark.integration

PROXY_YAML = REPO / "conf" / "proxy.yaml"
NGINX_CONF = REPO / "conf" / "nginx.conf"


def _udsproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "udsproxy", *args], capture_output=True, text=True, timeout=60
    )


def test_version() -> None:
    result = _udsproxy("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout + result.stderr


def test_shipped_proxy_yaml_validates() -> None:
    result = _udsproxy("--mode", "validate", "-c", str(PROXY_YAML))
    assert result.returncode == 0, result.stderr


def test_shipped_proxy_yaml_is_the_articles_scenario() -> None:
    doc = yaml.safe_load(PROXY_YAML.read_text())
    assert "admin" not in doc
    (lst,) = doc["static_resources"]["listeners"]
    assert lst["address"] == {"socket_address": {"address": "0.0.0.0", "port_value": 10000}}
    hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["stat_prefix"] == "ingress_http"
    assert hcm["use_remote_address"] is True
    (log,) = hcm["access_log"]
    assert log["typed_config"]["path"] == "/dev/stdout"
    assert "log_format" not in log["typed_config"]  # Envoy's default format
    (cluster,) = doc["static_resources"]["clusters"]
    assert cluster["name"] == "hugo" and cluster["type"] == "STATIC"
    assert cluster["connect_timeout"] == "0.25s"
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"] == {"pipe": {"path": "/dev/shm/hugo.sock"}}
    opts = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert opts["common_http_protocol_options"] == {"idle_timeout": "60s"}


def test_validate_reports_errors_with_their_path(tmp_path: Path) -> None:
    doc = yaml.safe_load(PROXY_YAML.read_text())
    doc["static_resources"]["clusters"][0]["conect_timeout"] = "1s"  # a typo
    doc["static_resources"]["clusters"][0]["connect_timeout"] = "soon"  # a wrong type
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = _udsproxy("--mode", "validate", "-c", str(bad))
    assert result.returncode != 0
    assert "conect_timeout" in result.stderr
    assert "connect_timeout" in result.stderr.replace("conect_timeout", "")


def test_shipped_nginx_conf_is_valid() -> None:
    binary = find_nginx()
    require(binary is not None, "nginx is not installed")
    assert binary is not None
    text = NGINX_CONF.read_text()
    assert "listen unix:/dev/shm/hugo.sock;" in text
    assert "keepalive_timeout 75s;" in text and "keepalive_requests 1000;" in text
    result = subprocess.run(
        [binary, "-t", "-q", "-c", str(NGINX_CONF)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_gracefully_and_flushes_the_log(
    sig: signal.Signals, nginx: NginxInstance, tmp_path: Path
) -> None:
    log_path = tmp_path / "access.log"
    proc = ProxyProcess(single_route_config(nginx.socket_path, log_path), tmp_path).start()
    try:
        assert get(proc.address(), "/index.html", headers={"User-Agent": "flush-me"}).status == 200
    finally:
        rc = proc.stop(sig)
    assert rc == 0, proc.stderr()
    (line,) = AccessLog(log_path).find('"flush-me"')  # written by the time the process exits
    assert line.endswith(f'"{nginx.socket_path}"')


@pytest.mark.parametrize(
    ("config", "accepted"),
    [
        ("envoy-demo.yaml", True),
        ("real/examples-tls-https-https.yaml", True),  # DNS, inline TLS, upstream TLS
        ("real/examples-jaeger-tracing.yaml", False),  # tracing: refused by name
    ],
)
def test_validate_real_envoy_configs_from_their_folder(config: str, accepted: bool) -> None:
    """What tests/unit/config/test_corpus.py pins for all 39, through the command itself."""
    path = REPO / "tests" / "corpora" / "envoy-configs" / config
    result = subprocess.run(
        [sys.executable, "-m", "udsproxy", "--mode", "validate", "-c", path.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path.parent,
    )
    assert "Traceback" not in result.stderr
    if accepted:
        assert result.returncode == 0, result.stderr
        assert f"configuration '{path.name}' OK" in result.stdout
    else:
        assert result.returncode == 1
        assert result.stderr.startswith(f"error initializing configuration '{path.name}':\n")
        assert "tracing: not supported by udsproxy" in result.stderr


def test_validate_the_articles_files() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "udsproxy", "--mode", "validate", "-c", "conf/article/envoy.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "deprecated v2 form 'type.googleapis.com/envoy.api.v2.Cluster'" in result.stderr


def test_envoy_as_the_first_argument() -> None:
    """Envoy's image also takes `envoy -c FILE` as its arguments: so does this one."""
    result = _udsproxy("envoy", "--mode", "validate", "-c", str(PROXY_YAML))
    assert result.returncode == 0, result.stderr
    assert _udsproxy("--drain-time", "5", "-c", str(PROXY_YAML)).returncode == 2  # no abbrev
