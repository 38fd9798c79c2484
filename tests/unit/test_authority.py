"""The Host value check (Envoy's authorityIsValid): every byte against RFC 3986's classes."""

from __future__ import annotations

import string

import pytest

from udsproxy.codec.http1 import AUTHORITY_TABLE

UNRESERVED = string.ascii_letters + string.digits + "-._~"
SUB_DELIMS = "!$&'()*+,;="
ALLOWED = {ord(c) for c in UNRESERVED + SUB_DELIMS + ":@[]%"}  # port, userinfo, IP-literal


def valid(value: bytes) -> bool:
    return value.translate(AUTHORITY_TABLE) == value


@pytest.mark.parametrize("byte", range(256))
def test_each_byte(byte: int) -> None:
    assert valid(b"a" + bytes([byte]) + b"b") == (byte in ALLOWED)


def test_hosts() -> None:
    assert valid(b"") and valid(b"example.com:8080") and valid(b"[fe80::1%25eth0]:80")
    assert valid(b"strangebutlegal$-%&'")  # Envoy's own test case
    assert not valid(b"illegal{}") and not valid(b"a b") and not valid(b"a/b")
