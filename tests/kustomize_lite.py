"""A small kustomize for deploy/kubernetes, so the tests need no kubectl.

It supports exactly what those kustomizations use: ``resources`` (files, or directories with a
kustomization.yaml) and ``patches`` with a ``path`` to a strategic-merge patch of a resource named
by its kind and metadata.name. Anything else in a kustomization is an error, so the manifests
cannot grow a feature this renderer would silently skip. tests/unit/test_manifests.py checks the
output against ``kubectl kustomize`` where kubectl is installed.

``pod_for_play`` turns the Deployment into the Pod that ``podman kube play`` runs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZE_DIR = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
_KNOWN_KEYS = {"apiVersion", "kind", "resources", "patches"}
# Strategic merge: lists of these keys merge element-wise by "name" (containers, volumes, ...).
_MERGE_BY_NAME = {"containers", "initContainers", "volumes", "volumeMounts", "ports", "env"}

Resource = dict[str, Any]


def render(directory: Path) -> list[Resource]:
    """The resources `kubectl kustomize DIRECTORY` prints, in the same order."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - _KNOWN_KEYS
    if unknown:
        raise ValueError(f"{directory}/kustomization.yaml: unsupported keys {sorted(unknown)}")
    out: list[Resource] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            out.extend(render(path))
        else:
            out.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    for patch in spec.get("patches", []):
        if set(patch) != {"path"}:
            raise ValueError(f"{directory}: only `patches: - path: FILE` is supported")
        body = yaml.safe_load((directory / patch["path"]).read_text())
        target = [
            r
            for r in out
            if r["kind"] == body["kind"] and r["metadata"]["name"] == body["metadata"]["name"]
        ]
        if len(target) != 1:
            raise ValueError(f"{patch['path']}: matches {len(target)} resources")
        _merge(target[0], body)
    return out


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        have = into.get(key)
        if isinstance(value, dict) and isinstance(have, dict):
            _merge(have, value)
        elif key in _MERGE_BY_NAME and isinstance(value, list) and isinstance(have, list):
            by_name = {item.get("name"): item for item in have}
            for item in value:
                if item.get("name") in by_name:
                    _merge(by_name[item["name"]], item)
                else:
                    have.append(copy.deepcopy(item))
        else:
            into[key] = copy.deepcopy(value)


def by_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def pod_for_play(
    resources: list[Resource], name: str, images: dict[str, str], host_ports: dict[int, int]
) -> list[Resource]:
    """The ConfigMaps and, from the Deployment's template, a Pod named NAME: images replaced
    (container name -> image), host ports added (container port -> host port, on 127.0.0.1),
    and restartPolicy Never, so that a container stopped by a signal stays stopped with its
    exit code (a Deployment's Always would have podman start it again at once)."""
    (deployment,) = by_kind(resources, "Deployment")
    template = copy.deepcopy(deployment["spec"]["template"])
    pod: Resource = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"].get("labels", {})},
        "spec": {**template["spec"], "restartPolicy": "Never"},
    }
    # podman makes a named volume per pod volume: names unique to this pod, so that runs
    # side by side do not share a socket directory or a config.
    for volume in pod["spec"].get("volumes", []):
        volume["name"] = f"{name}-{volume['name']}"
    for container in pod["spec"]["containers"]:
        for mount in container.get("volumeMounts", []):
            mount["name"] = f"{name}-{mount['name']}"
        if container["name"] in images:
            container["image"] = images[container["name"]]
        for port in container.get("ports", []):
            if port["containerPort"] in host_ports:
                port["hostPort"] = host_ports[port["containerPort"]]
                port["hostIP"] = "127.0.0.1"
    return [*copy.deepcopy(by_kind(resources, "ConfigMap")), pod]
