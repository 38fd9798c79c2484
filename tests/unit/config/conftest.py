"""Shared fixtures for the config tests."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from udsproxy.config import validate


@pytest.fixture(scope="session", autouse=True)
def _envoy_api() -> None:
    """Import envoy_data_plane (~1.3 s) once, up front, so no single test carries the cost.

    validate caches the message pool and per-class field tables with functools.cache, so this
    is the only import for the whole session.
    """
    validate.resolve_type(validate.BOOTSTRAP)


@dataclass(frozen=True)
class Certs:
    """PEM files made for the test session (one directory)."""

    dir: Path
    cert: str  # CN=a.example, with key
    key: str
    cert2: str  # CN=b.example, with key2
    key2: str
    encrypted_key: str  # key, encrypted with a password
    junk: str  # not PEM


def _self_signed(directory: Path, name: str) -> tuple[str, str]:
    """A self-signed certificate and its key (EC: quicker to make than RSA)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    command = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-subj", f"/CN={name}", "-days", "1", "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return str(cert), str(key)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    directory = tmp_path_factory.mktemp("certs")
    cert, key = _self_signed(directory, "a.example")
    cert2, key2 = _self_signed(directory, "b.example")
    encrypted = directory / "encrypted.key"
    command = ["openssl", "pkey", "-in", key, "-aes256", "-passout", "pass:secret"]
    command += ["-out", str(encrypted)]
    subprocess.run(command, check=True, capture_output=True)
    junk = directory / "junk.pem"
    junk.write_text("not a certificate\n", encoding="utf-8")
    return Certs(directory, cert, key, cert2, key2, str(encrypted), str(junk))
