"""Shared fixtures for the config tests."""

from __future__ import annotations

import pytest

from udsproxy.config import validate


@pytest.fixture(scope="session", autouse=True)
def _envoy_api() -> None:
    """Import envoy_data_plane (~1.3 s) once, up front, so no single test carries the cost.

    validate caches the message pool and per-class field tables with functools.cache, so this
    is the only import for the whole session.
    """
    validate.resolve_type(validate.BOOTSTRAP)
