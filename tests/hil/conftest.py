"""The software eUICC the tests here drive, on the session's test PKI."""

from __future__ import annotations

import pytest

from hil.euicc import SoftEuicc
from hil.pki import RspPki


@pytest.fixture
def euicc(pki: RspPki) -> SoftEuicc:
    return SoftEuicc(pki, pki.eid_bytes)
