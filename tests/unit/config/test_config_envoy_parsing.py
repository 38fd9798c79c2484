"""How Envoy reads YAML where a strict reading would refuse it, pinned (issue 8, item 1)."""

from __future__ import annotations

import pytest

from udsproxy.config.load import load_yaml, parse_yaml
from udsproxy.errors import ConfigError

CLUSTER = """\
static_resources:
  clusters:
  - name: hugo
    connect_timeout: 15s
    type: {type}
    lb_policy: {lb}
    load_assignment:
      cluster_name: hugo
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{pipe: {{path: /dev/shm/hugo.sock}}}}}}
"""


@pytest.mark.parametrize(("type_", "lb"), [("static", "round_robin"), ("Static", "Round_Robin")])
def test_enum_values_are_case_insensitive(type_: str, lb: str) -> None:
    # Envoy: MessageUtil::loadFromJsonNoThrow sets case_insensitive_enum_parsing (upper-cased)
    bootstrap = load_yaml(CLUSTER.format(type=type_, lb=lb))
    assert bootstrap.clusters[0].name == "hugo"


def test_an_unknown_enum_value_still_fails() -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml(CLUSTER.format(type="statik", lb="ROUND_ROBIN"))
    assert "unknown enum value 'statik'" in str(info.value)


def test_tabs_after_a_token_are_white_space() -> None:
    assert parse_yaml("a: 1\t\nb: [1,\t2]\nc:\t\n  d: x\t\n") == {
        "a": 1,
        "b": [1, 2],
        "c": {"d": "x"},
    }


def test_a_tab_in_indentation_is_still_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml("a: 1\n\tb: 2\n")
    assert "<string>:2:1: YAML syntax error: found character '\\t'" in str(info.value)
