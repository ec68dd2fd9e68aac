"""Fixtures of the rig tests: the session's test PKI, software eUICCs, the SM-DP+/eIM peers on
real TLS sockets, and a socat pty pair with the AT modem emulator on one end (a real serial
path: pyserial on the other end), so every rig scenario runs on both the soft and the serial
backend."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hil.euicc import SoftEuicc
from hil.modem_emulator import EmulatorThread, ModemEmulator, Quirks
from hil.peers.eim import EimServer
from hil.peers.smdpp import SmdppServer
from hil.pki import RspPki
from hil.rig.backends import RigBackend, SoftBackend, open_backend

BACKENDS = ("soft", "serial")


@pytest.fixture
def card(euicc: SoftEuicc) -> SoftEuicc:
    """The card in the rig: tests/conftest.py's software eUICC."""
    return euicc


@contextmanager
def backend_for(kind: str, card: SoftEuicc, pty_pair: tuple[str, str] | None,
                quirks: str = "urc,max-apdu=128", options: str = ",segment=128,timeout=3") -> Iterator[RigBackend]:
    """The rig backend `kind` in front of `card`: the card itself, or the modem emulator on a pty."""
    if kind == "soft":
        yield SoftBackend(card)
        return
    assert pty_pair is not None
    with EmulatorThread(ModemEmulator(card, Quirks.parse(quirks)), pty_pair[1], idle_urc_s=0.05):
        backend = open_backend(f"serial:{pty_pair[0]}{options}")
        try:
            yield backend
        finally:
            backend.close()


@pytest.fixture
async def peers(pki: RspPki) -> AsyncIterator[tuple[EimServer, SmdppServer]]:  # noqa: F811
    async with SmdppServer(pki) as smdp, EimServer(pki, smdp_url=smdp.url) as eim:
        yield eim, smdp
