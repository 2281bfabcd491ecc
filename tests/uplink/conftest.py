"""Fixtures of the uplink tests: one PKI for the session (RSA key generation dominates)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.secure_channel import SharedPki


@pytest.fixture(scope="session")
def spki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedPki]:
    shared = SharedPki(tmp_path_factory.mktemp("uplink-pki"))
    yield shared
    shared.close()
