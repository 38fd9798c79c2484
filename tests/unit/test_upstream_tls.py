"""Pure pieces of upstream TLS: SAN matching (Envoy's semantics), the transport failure reason,
and reading DataSources (memfd for inline values)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from udsproxy.config import datasource
from udsproxy.config.schema import DataSource, SanMatcher
from udsproxy.upstream_tls import failure_reason, san_matches

SANS = (
    ("DNS", "api.example.com"),
    ("DNS", "*.wild.example.com"),
    ("IP Address", "2001:DB8:0:0:0:0:0:1"),  # as Python's getpeercert() writes IPv6
    ("IP Address", "10.0.0.7"),
    ("URI", "spiffe://cluster.local/ns/default/sa/web"),
    ("email", "ops@example.com"),
    ("DirName", "ignored"),
)


@pytest.mark.parametrize(
    ("matcher", "ok"),
    [
        (SanMatcher(san_type="DNS", exact="api.example.com"), True),
        (SanMatcher(san_type="DNS", exact="API.example.com"), True),  # DNS names: no case
        (SanMatcher(san_type="DNS", exact="x.wild.example.com"), True),  # certificate wildcard
        (SanMatcher(san_type="DNS", exact="a.b.wild.example.com"), False),  # one label only
        (SanMatcher(san_type="DNS", exact="wild.example.com"), False),
        (SanMatcher(san_type="DNS", prefix="api."), True),
        (SanMatcher(san_type="DNS", prefix="API."), False),
        (SanMatcher(san_type="DNS", prefix="API.", ignore_case=True), True),
        (SanMatcher(san_type="DNS", suffix=".example.com"), True),
        (SanMatcher(san_type="DNS", contains="example"), True),
        (SanMatcher(san_type="DNS", safe_regex=r"api\.example\.com"), True),
        (SanMatcher(san_type="DNS", safe_regex=r"api"), False),  # full match, as RE2's
        (SanMatcher(san_type="URI", exact="api.example.com"), False),  # wrong type
        (SanMatcher(san_type="URI", prefix="spiffe://cluster.local/"), True),
        (SanMatcher(san_type="IP_ADDRESS", exact="2001:db8::1"), True),
        (SanMatcher(san_type="IP_ADDRESS", exact="10.0.0.7"), True),
        (SanMatcher(san_type="IP_ADDRESS", exact="10.0.0.8"), False),
        (SanMatcher(san_type="EMAIL", exact="ops@example.com"), True),
        (SanMatcher(san_type="EMAIL", exact="ignored"), False),  # DirName is never matched
        (SanMatcher(san_type="", exact="ops@example.com"), True),  # legacy: any type
        (SanMatcher(san_type="", exact="y.wild.example.com"), True),
    ],
)
def test_san_matching(matcher: SanMatcher, ok: bool) -> None:
    assert san_matches([matcher], SANS) is ok


def test_any_matcher_is_enough_and_none_accepts_all() -> None:
    miss = SanMatcher(san_type="DNS", exact="nope.example.com")
    hit = SanMatcher(san_type="EMAIL", suffix="@example.com")
    assert san_matches([miss, hit], SANS)
    assert not san_matches([miss], SANS)
    assert not san_matches([hit], ())
    assert san_matches([], ())


def test_failure_reason_uses_envoys_wording() -> None:
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify")
    exc.library, exc.reason = "SSL", "CERTIFICATE_VERIFY_FAILED"
    assert failure_reason(exc) == (
        "TLS error: 268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED"
    )
    exc = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    exc.library, exc.reason = "SSL", "WRONG_VERSION_NUMBER"
    assert failure_reason(exc) == (
        "TLS error: 268435703:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER"
    )
    exc = ssl.SSLError(1, "alert")
    exc.library, exc.reason = "SSL", "TLSV13_ALERT_CERTIFICATE_REQUIRED"  # OpenSSL's spelling
    assert failure_reason(exc) == (
        "TLS error: 268436572:SSL routines:OPENSSL_internal:TLSV1_ALERT_CERTIFICATE_REQUIRED"
    )
    exc = ssl.SSLError(1, "other")
    exc.library, exc.reason = "SSL", "SOMETHING_NEW"  # no BoringSSL number known: left out
    assert failure_reason(exc) == "TLS error: SSL routines:OPENSSL_internal:SOMETHING_NEW"


# --- DataSource bytes -----------------------------------------------------------------------------


def test_read_every_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"file\x00bytes")
    monkeypatch.setenv("UDSPROXY_TEST_DS", "from env")
    assert datasource.read(DataSource(kind="filename", value=str(path))) == b"file\x00bytes"
    assert datasource.read(DataSource(kind="inline_string", value="héllo")) == "héllo".encode()
    assert datasource.read(DataSource(kind="inline_bytes", value="AP8=")) == b"\x00\xff"
    assert datasource.read(DataSource(kind="environment_variable", value="UDSPROXY_TEST_DS")) == (
        b"from env"
    )


def test_read_errors_name_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UDSPROXY_NO_SUCH_VAR", raising=False)
    with pytest.raises(datasource.DataSourceError, match="'UDSPROXY_NO_SUCH_VAR' is not set"):
        datasource.read(DataSource(kind="environment_variable", value="UDSPROXY_NO_SUCH_VAR"))
    with pytest.raises(datasource.DataSourceError, match=r"cannot read .*No such file"):
        datasource.read(DataSource(kind="filename", value=str(tmp_path / "missing")))
    with pytest.raises(datasource.DataSourceError, match=r"cannot read .*Is a directory"):
        datasource.read(DataSource(kind="filename", value=str(tmp_path)))


def test_read_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasource, "MAX_BYTES", 1024)
    with pytest.raises(datasource.DataSourceError, match="larger than 1024 bytes"):
        datasource.read(DataSource(kind="filename", value="/dev/zero"))


def test_as_file_uses_a_memfd_for_inline_values(tmp_path: Path) -> None:
    with datasource.as_file(DataSource(kind="inline_string", value="secret")) as name:
        assert name.startswith("/proc/self/fd/")
        assert os.readlink(name).startswith("/memfd:")  # never on a file system
        assert Path(name).read_text() == "secret"
        assert Path(name).read_text() == "secret"  # each open starts at the beginning
    # closed with the block (the fd number may be reused, but not by this memfd)
    assert not os.path.exists(name) or "udsproxy-datasource" not in os.readlink(name)
    path = tmp_path / "f"
    path.write_text("x")
    with datasource.as_file(DataSource(kind="filename", value=str(path))) as name:
        assert name == str(path)
