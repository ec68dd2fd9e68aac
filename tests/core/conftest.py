"""Fixtures for the engine tests: the test PKI (generated once per session) and software eUICCs."""

from __future__ import annotations

import pytest

from hil.pki import RspPki, generate_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> RspPki:
    return generate_pki(tmp_path_factory.mktemp("pki"))
