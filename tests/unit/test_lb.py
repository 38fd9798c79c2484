"""The weighted round robin schedule (udsproxy.lb)."""

from __future__ import annotations

from collections import Counter

from udsproxy.lb import MAX_CYCLE, schedule


def test_equal_weights_are_plain_round_robin() -> None:
    assert schedule([("a", 1), ("b", 1), ("c", 1)]) == ("a", "b", "c")
    assert schedule([("a", 7), ("b", 7)]) == ("a", "b")
    assert schedule([]) == ()


def test_weights_are_honoured_and_interleaved() -> None:
    assert schedule([("a", 5), ("b", 1), ("c", 1)]) == ("a", "a", "b", "a", "c", "a", "a")
    assert schedule([("a", 2), ("b", 1)]) == ("a", "b", "a")


def test_common_factor_keeps_the_cycle_short() -> None:
    cycle = schedule([("a", 300), ("b", 100)])
    assert len(cycle) == 4
    assert Counter(cycle) == {"a": 3, "b": 1}


def test_huge_weights_are_scaled_to_the_cap() -> None:
    cycle = schedule([("a", 4_000_000_000), ("b", 1_000_000_000), ("c", 1)])
    assert len(cycle) <= MAX_CYCLE + 1
    counts = Counter(cycle)
    assert counts["c"] == 1  # every host keeps a turn
    assert abs(counts["a"] / counts["b"] - 4) < 0.01
