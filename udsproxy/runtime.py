"""Envoy's layered runtime: key -> value overrides read by the features that name runtime keys.

``layered_runtime.layers`` are merged in order, a later layer overriding an earlier one:

* ``static_layer``: a nested mapping from the bootstrap, flattened to dotted keys
  (``{envoy: {a: 1}}`` is ``envoy.a``);
* ``disk_layer``: the files under ``symlink_root``/``subdirectory``, one key per file (its path
  with ``/`` as ``.``), the stripped content its value; re-read by ``refresh()``, which the server
  calls on a timer, so swapping the symlink (Envoy's way of changing it) takes effect;
* ``admin_layer``: what ``POST /runtime_modify?key=value`` sets (an empty value removes it).

Values are strings, as Envoy keeps them; readers convert. Lookups go to one merged dict that is
rebuilt only when a layer changes, so reading a key on the data path is one dict lookup.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from udsproxy.config import schema

__all__ = ["Runtime"]

log = logging.getLogger("udsproxy.runtime")

_MAX_DISK_FILES = 10_000  # a runtime tree is small; never walk a whole filesystem by mistake
_MAX_VALUE_BYTES = 64 * 1024


def _signature(root: str, subdirectory: str) -> tuple[str, int]:
    """Where a disk layer's symlink points, and when that directory's entries last changed."""
    real = os.path.realpath(root)
    try:
        return real, os.stat(os.path.join(real, subdirectory)).st_mtime_ns
    except OSError:
        return real, -1


def _read_disk(root: str, subdirectory: str) -> dict[str, str]:
    """A disk layer's keys; a missing directory is an empty layer (as in Envoy)."""
    base = Path(os.path.realpath(root)) / subdirectory if subdirectory else Path(root)
    out: dict[str, str] = {}
    if not base.is_dir():
        return out
    for count, path in enumerate(sorted(base.rglob("*"))):
        if count >= _MAX_DISK_FILES:
            log.warning("runtime disk layer %s: more than %d files, the rest ignored", base, count)
            break
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            with path.open("rb") as f:
                value = f.read(_MAX_VALUE_BYTES)
        except OSError as exc:
            log.warning("runtime disk layer: cannot read %s: %s", path, exc.strerror)
            continue
        key = ".".join(path.relative_to(base).parts)
        out[key] = value.decode("utf-8", "replace").strip()
    return out


class Runtime:
    """One process's runtime: the configured layers plus the admin layer."""

    def __init__(self, layers: tuple[schema.RuntimeLayer, ...] = ()) -> None:
        self.layers = layers
        self._disk: dict[str, dict[str, str]] = {}
        self._signatures: dict[str, tuple[str, int]] = {}
        self.admin: dict[str, str] = {}
        self.values: dict[str, str] = {}
        self.refresh()

    def set_layers(self, layers: tuple[schema.RuntimeLayer, ...]) -> None:
        """A reload's layers; what the admin layer holds stays."""
        self.layers = layers
        self._disk = {}
        self._signatures = {}
        self.values = {}
        self.refresh()

    def refresh(self) -> bool:
        """Re-read the disk layers whose tree was swapped; True if any key changed.

        As Envoy, a disk layer changes when its symlink is pointed at another tree (or that
        directory's entries change): one realpath and one stat per layer, and the files are
        read only then, so the periodic check costs the event loop next to nothing."""
        changed = False
        for layer in self.layers:
            if layer.kind != "disk":
                continue
            signature = _signature(layer.symlink_root, layer.subdirectory)
            if signature == self._signatures.get(layer.name) and layer.name in self._disk:
                continue
            self._signatures[layer.name] = signature
            data = _read_disk(layer.symlink_root, layer.subdirectory)
            if data != self._disk.get(layer.name):
                self._disk[layer.name] = data
                changed = True
        if not changed and self.values:
            return False
        return self._merge()

    def modify(self, changes: Mapping[str, str]) -> None:
        """The admin layer: set each key, or remove it when its value is empty."""
        for key, value in changes.items():
            if value:
                self.admin[key] = value
            else:
                self.admin.pop(key, None)
        self._merge()

    def _merge(self) -> bool:
        merged: dict[str, str] = {}
        for layer in self.layers:
            if layer.kind == "static":
                merged.update(layer.values)
            elif layer.kind == "disk":
                merged.update(self._disk.get(layer.name, {}))
            elif layer.kind == "admin":
                merged.update(self.admin)
        changed = merged != self.values
        self.values = merged
        return changed

    @property
    def has_admin_layer(self) -> bool:
        return any(layer.kind == "admin" for layer in self.layers)

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def integer(self, key: str, default: int) -> int:
        value = self.values.get(key)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            return default

    def percent(self, key: str, default: float) -> float:
        """A percentage key (0-100), e.g. ``fault.http.abort.abort_percent``."""
        value = self.values.get(key)
        if value is None:
            return default
        try:
            return min(max(float(value), 0.0), 100.0)
        except ValueError:
            return default

    def dump(self) -> dict[str, object]:
        """GET /runtime: Envoy's shape, layers and the merged entries."""
        names = [layer.name for layer in self.layers]
        entries: dict[str, object] = {}
        for key, value in sorted(self.values.items()):
            layer_values = []
            for layer in self.layers:
                if layer.kind == "static":
                    layer_values.append(layer.values.get(key, ""))
                elif layer.kind == "disk":
                    layer_values.append(self._disk.get(layer.name, {}).get(key, ""))
                else:
                    layer_values.append(self.admin.get(key, ""))
            entries[key] = {"final_value": value, "layer_values": layer_values}
        return {"layers": names, "entries": entries}
