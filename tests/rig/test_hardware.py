"""The rig scenarios on real hardware: a modem on a serial port, a card in a PC/SC reader.

Skipped, with the reason, unless the rig PC has the hardware and says where it is:

    IPAE_RIG_SERIAL=/dev/ttyUSB2[,segment=128,...]   a modem (same options as --backend serial:)
    IPAE_RIG_PCSC=1 | READER                          a PC/SC reader (first one, or by name/index);
                                                      needs pyscard and a running pcscd
    IPAE_RIG_PKI=DIR                                  the test PKI the card was issued under
                                                      (default: a fresh one, so no real card is a test card)
    IPAE_RIG_STATE_CHANGES=1                          also run the lifecycle (test cards only)

The probes are read-only; the lifecycle runs only when the card proves to be a test card.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import GatewayError
from hil.pki import RspPki
from hil.rig import RigOptions, run_scenario
from hil.rig.backends import RigBackend, open_backend, pcsc_readers

pytestmark = [pytest.mark.hardware, pytest.mark.timeout(300)]


def _spec(kind: str) -> str:
    if kind == "serial":
        target = os.environ.get("IPAE_RIG_SERIAL")
        if not target:
            pytest.skip("no modem: set IPAE_RIG_SERIAL=/dev/ttyUSB2[,segment=128] on a rig PC")
        return f"serial:{target}"
    reader = os.environ.get("IPAE_RIG_PCSC")
    if not reader:
        pytest.skip("no card reader: set IPAE_RIG_PCSC=1 (first reader) or a reader name on a rig PC")
    try:
        readers = pcsc_readers()
    except GatewayError as exc:
        pytest.skip(f"PC/SC not usable: {exc}")
    if not readers:
        pytest.skip("pyscard sees no PC/SC reader")
    return "pcsc" if reader == "1" else f"pcsc:{reader}"


@pytest.fixture(params=["serial", "pcsc"])
def hardware(request: pytest.FixtureRequest) -> Iterator[RigBackend]:
    spec = _spec(request.param)
    try:
        backend = open_backend(spec)
    except GatewayError as exc:
        pytest.skip(f"{spec}: {exc}")
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def rig_pki(pki: RspPki) -> RspPki:
    directory = os.environ.get("IPAE_RIG_PKI")
    return RspPki.load(Path(directory)) if directory else pki


async def test_probe_on_real_hardware_reads_the_card(hardware: RigBackend, rig_pki: RspPki) -> None:
    result = await run_scenario(hardware, RigOptions("probe", rig_pki))
    assert result.ok, result.error
    assert result.card is not None and result.card.info1["svn"]
    assert all(s.ok for s in result.steps if s.name in ("select ISD-R", "GetEUICCInfo1", "close channel"))


async def test_lifecycle_on_a_real_test_card(hardware: RigBackend, rig_pki: RspPki) -> None:
    if os.environ.get("IPAE_RIG_STATE_CHANGES") != "1":
        pytest.skip("state-changing hardware test: set IPAE_RIG_STATE_CHANGES=1 (test cards only)")
    probe = await run_scenario(hardware, RigOptions("probe", rig_pki))
    assert probe.card is not None and probe.card.verdict is not None
    if not probe.card.verdict.test_card:
        pytest.skip(f"not a test card: {probe.card.verdict.reason}")
    result = await run_scenario(hardware, RigOptions("lifecycle", rig_pki, timeout_s=120.0))
    assert result.ok, result.error
