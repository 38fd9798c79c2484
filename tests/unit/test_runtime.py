"""Envoy's layered runtime (udsproxy.runtime): layer order, disk layers, the admin layer."""

from __future__ import annotations

import os
from pathlib import Path

from udsproxy.config.convert import flatten
from udsproxy.config.schema import RuntimeLayer
from udsproxy.runtime import Runtime


def test_static_layers_flatten_to_dotted_keys() -> None:
    tree = {
        "envoy": {"resource_limits": {"listener": {"a": {"connection_limit": 1000}}}},
        "x": True,
    }
    assert dict(flatten(tree)) == {
        "envoy.resource_limits.listener.a.connection_limit": "1000",
        "x": "true",
    }


def test_later_layers_override_earlier_ones(tmp_path: Path) -> None:
    root = tmp_path / "v1"
    (root / "envoy" / "fault" / "http" / "abort").mkdir(parents=True)
    (root / "envoy" / "fault" / "http" / "abort" / "abort_percent").write_text("50\n")
    current = tmp_path / "current"
    current.symlink_to(root)
    layers = (
        RuntimeLayer(name="s", kind="static", values={"fault.http.abort.abort_percent": "10"}),
        RuntimeLayer(name="d", kind="disk", symlink_root=str(current), subdirectory="envoy"),
        RuntimeLayer(name="a", kind="admin"),
    )
    runtime = Runtime(layers)
    assert runtime.percent("fault.http.abort.abort_percent", 0) == 50
    runtime.modify({"fault.http.abort.abort_percent": "75"})
    assert runtime.percent("fault.http.abort.abort_percent", 0) == 75
    runtime.modify({"fault.http.abort.abort_percent": ""})  # removed from the admin layer
    assert runtime.get("fault.http.abort.abort_percent") == "50"

    # Envoy's way of changing a disk layer: point the symlink at a new tree
    new = tmp_path / "v2" / "envoy"
    new.mkdir(parents=True)
    (new / "some_key").write_text("1")
    tmp_link = tmp_path / "next"
    tmp_link.symlink_to(tmp_path / "v2")
    os.replace(tmp_link, current)
    assert runtime.refresh()
    assert runtime.get("some_key") == "1"
    assert runtime.percent("fault.http.abort.abort_percent", 0) == 10  # the static layer's
    assert not runtime.refresh()  # nothing changed
    assert runtime.dump()["layers"] == ["s", "d", "a"]


def test_readers_fall_back_on_bad_values() -> None:
    runtime = Runtime((RuntimeLayer(name="s", kind="static", values={"a": "x", "b": "250"}),))
    assert runtime.integer("a", 7) == 7
    assert runtime.percent("a", 5.0) == 5.0
    assert runtime.percent("b", 0) == 100.0
    assert runtime.integer("missing", 3) == 3


def test_a_missing_disk_directory_is_an_empty_layer(tmp_path: Path) -> None:
    layer = RuntimeLayer(name="d", kind="disk", symlink_root=str(tmp_path / "none"))
    assert Runtime((layer,)).values == {}


def test_local_reply_filters_read_their_runtime_key() -> None:
    from udsproxy.config.schema import AccessLogFilter
    from udsproxy.localreply import compile_filter
    from udsproxy.streaminfo import StreamInfo

    runtime = Runtime((RuntimeLayer(name="a", kind="admin"),))
    match = compile_filter(
        AccessLogFilter(kind="status_code", op="GE", value=500, runtime_key="lr.min"), runtime
    )
    info = StreamInfo(0.0, 0.0)
    info.response_code = 404
    assert not match(info)  # the default_value: 500
    runtime.modify({"lr.min": "400"})
    assert match(info)  # the runtime's value, read per reply
