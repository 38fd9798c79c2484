"""Path normalization (udsproxy.pathnorm): Envoy's normalize_path, merge_slashes and
path_with_escaped_slashes_action, in Envoy's order."""

from __future__ import annotations

import pytest

from udsproxy.pathnorm import PathNormalizer, Result, canonical_path, remove_dot_segments


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/a/b/c/./../../g", b"/a/g"),  # RFC 3986 5.2.4's example
        (b"/..", b"/"),
        (b"/a/b/..", b"/a/"),
        (b"/a/.", b"/a/"),
        (b"/a//b", b"/a//b"),  # merging slashes is another option
    ],
)
def test_remove_dot_segments(path: bytes, expected: bytes) -> None:
    assert remove_dot_segments(path) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/%7Euser/%61%2d", b"/~user/a-"),  # unreserved characters are decoded
        (b"/a%2fb%c3%a9", b"/a%2Fb%C3%A9"),  # the others keep their escape, in upper case
        (b"/a\\b", b"/a/b"),
        (b"/%2e%2E/x", b"/x"),  # escaped dots are dots
        (b"/a%zz", None),
        (b"/a%4", None),
        (b"a/b", None),
    ],
)
def test_canonical_path(path: bytes, expected: bytes | None) -> None:
    assert canonical_path(path) == expected


def test_merge_slashes_leaves_the_query() -> None:
    assert PathNormalizer(False, True, "")(b"//a///b?c=//d") == Result(b"/a/b?c=//d")


def test_escaped_slashes_come_first() -> None:
    forward = PathNormalizer(True, True, "UNESCAPE_AND_FORWARD")
    assert forward(b"/a%2F%2F..%5Cb") == Result(b"/a/b")  # ".." removes the empty segment
    assert PathNormalizer(False, False, "REJECT_REQUEST")(b"/a%2fb").reject
    assert PathNormalizer(False, False, "REJECT_REQUEST")(b"/a/b?x=%2F") == Result(b"/a/b?x=%2F")
    assert PathNormalizer(False, False, "UNESCAPE_AND_REDIRECT")(b"/a%2Fb?q") == Result(
        b"/a/b?q", redirect=True
    )


def test_needed_only_when_something_is_on() -> None:
    assert not PathNormalizer.needed(False, False, "KEEP_UNCHANGED")
    assert not PathNormalizer.needed(False, False, "")
    assert PathNormalizer.needed(True, False, "KEEP_UNCHANGED")
    assert PathNormalizer.needed(False, False, "REJECT_REQUEST")
