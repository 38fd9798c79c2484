"""deploy/kubernetes and the Dockerfile, checked offline: kubernetes-validate --strict against a
pinned Kubernetes version, hadolint, the ConfigMap's udsproxy config through the real loader, and
tests/kustomize_lite.py against `kubectl kustomize` where kubectl is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.kustomize_lite import KUSTOMIZE_DIR, by_kind, render
from udsproxy.config.load import load_and_resolve

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.31.0"  # the oldest release the manifests target (matchLabelKeys: 1.27+)
OVERLAYS = ["base", "overlays/scale-out"]


def _tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is missing: pip install -e '.[dev]'"
    return found


@pytest.mark.parametrize("which", OVERLAYS)
def test_manifests_pass_kubernetes_validate_strict(which: str, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(render(KUSTOMIZE_DIR / which)))
    done = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, "--quiet",
         str(rendered)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path: Path) -> None:
    """--strict really is strict: a misspelt field fails."""
    (deployment,) = by_kind(render(KUSTOMIZE_DIR / "base"), "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 15
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    done = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [_tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("which", OVERLAYS)
def test_renderer_matches_kubectl_kustomize(which: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the renderer is checked where it is")
    out = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZE_DIR / which)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip

    def key(r: dict[str, object]) -> str:
        return yaml.safe_dump(r, sort_keys=True)

    theirs = [d for d in yaml.safe_load_all(out) if d]
    assert sorted(render(KUSTOMIZE_DIR / which), key=key) == sorted(theirs, key=key)


def test_configmap_config_loads(tmp_path: Path) -> None:
    """The ConfigMap's bootstrap, CDS and LDS files load as udsproxy would read them."""
    (cm,) = [c for c in by_kind(render(KUSTOMIZE_DIR / "base"), "ConfigMap")
             if c["metadata"]["name"] == "udsproxy-config"]  # fmt: skip
    for name, text in cm["data"].items():
        (tmp_path / name).write_text(text.replace("/etc/udsproxy", str(tmp_path)))
    bootstrap = load_and_resolve(str(tmp_path / "envoy.yaml"))
    assert bootstrap is not None


def test_image_default_config_loads() -> None:
    assert load_and_resolve(str(ROOT / "deploy" / "docker" / "envoy.yaml")) is not None


def test_deployment_timings_agree() -> None:
    """terminationGracePeriodSeconds covers the preStop sleep plus the drain, with margin."""
    (deployment,) = by_kind(render(KUSTOMIZE_DIR / "base"), "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    proxy = next(c for c in spec["containers"] if c["name"] == "udsproxy")
    drain = float(proxy["args"][proxy["args"].index("--drain-time-s") + 1])
    hook = "\n".join(proxy["lifecycle"]["preStop"]["exec"]["command"])
    assert f"time.sleep({drain:g})" in hook and "drain_listeners?graceful" in hook
    assert spec["terminationGracePeriodSeconds"] >= 2 * drain + 5
    nginx = next(c for c in spec["containers"] if c["name"] == "nginx")
    assert nginx["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", f"{2 * drain:g}"]
    assert "rm -f /dev/shm/hugo.sock" in " ".join(nginx["command"])
    sock = next(v for v in spec["volumes"] if v["name"] == "sock")
    assert sock["emptyDir"]["medium"] == "Memory" and sock["emptyDir"]["sizeLimit"]
