"""The rig backends and the --backend parser: one interface, clear errors, nothing duplicated."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from gateway.errors import ConfigError
from gateway.links.serial import ModemEuicc
from gateway.spec.apdu import ISD_R_AID, split_response
from hil.euicc import SoftEuicc
from hil.pki import RspPki
from hil.rig.backends import (
    AsyncBackend,
    BackendSpec,
    CardUnavailable,
    Counting,
    SerialBackend,
    SoftBackend,
    open_backend,
    parse_spec,
    pcsc_readers,
)
from hil.rig.isdr import IsdR
from tests.rig.conftest import backend_for


pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("text", "spec"), [
    ("soft", BackendSpec("soft")),
    ("soft,state=card.json,eid=89049032000000000000000000000163",
     BackendSpec("soft", None, {"state": "card.json", "eid": "89049032000000000000000000000163"})),
    ("serial:/dev/ttyUSB2", BackendSpec("serial", "/dev/ttyUSB2")),
    ("serial:/dev/ttyUSB2,segment=128", BackendSpec("serial", "/dev/ttyUSB2", {"segment": "128"})),
    ("serial:/dev/ttyACM0,segment=64,baud=921600,mode=csim,max_le=255,timeout=8",
     BackendSpec("serial", "/dev/ttyACM0", {"segment": "64", "baud": "921600", "mode": "csim", "max_le": "255",
                                            "timeout": "8"})),
    ("pcsc", BackendSpec("pcsc")),
    ("pcsc:0", BackendSpec("pcsc", "0")),
    ("pcsc:Identiv uTrust 3700 F CL Reader [CCID Interface] (55041915200000), 00",
     BackendSpec("pcsc", "Identiv uTrust 3700 F CL Reader [CCID Interface] (55041915200000), 00")),
])
def test_backend_specs_parse(text: str, spec: BackendSpec) -> None:
    assert parse_spec(text) == spec


@pytest.mark.parametrize(("text", "complaint"), [
    ("usb", "unknown backend"),
    ("serial", "serial needs a device"),
    ("serial:/dev/ttyUSB2,segment", "is not KEY=VALUE"),
    ("serial:/dev/ttyUSB2,speed=9600", "has no option 'speed'"),
    ("soft:/dev/x", "soft takes options"),
    ("soft,segment=3", "has no option 'segment'"),
])
def test_bad_backend_specs_are_config_errors_that_say_why(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        parse_spec(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_backend_text_parses_or_is_a_config_error(text: str) -> None:
    try:
        spec = parse_spec(text)
    except ConfigError:
        return
    assert spec.kind in ("soft", "serial", "pcsc")


@pytest.mark.parametrize(("text", "complaint"), [
    ("serial:/dev/null-rig,segment=0", "segment size 0"),
    ("serial:/dev/null-rig,segment=abc", "not a whole number"),
    ("serial:/dev/null-rig,mode=at", "not auto, cgla or csim"),
    ("serial:/dev/null-rig,timeout=soon", "not a number"),
    ("soft,eid=89", "an EID is 16 bytes"),
    ("soft,eid=zz", "not 32 hex digits"),
])
def test_bad_backend_options_are_refused_before_any_port_is_opened(text: str, complaint: str, pki: RspPki) -> None:
    with pytest.raises(ConfigError, match=complaint):
        open_backend(text, pki_dir=pki.directory)


def test_soft_backend_needs_the_pki() -> None:
    with pytest.raises(ConfigError, match="--pki"):
        open_backend("soft")


def test_soft_backend_keeps_its_state_file_across_opens(pki: RspPki, tmp_path: Path) -> None:
    state = tmp_path / "card.json"
    first = open_backend(f"soft,state={state}", pki_dir=pki.directory)
    assert isinstance(first, SoftBackend) and first.card.eid == pki.eid_bytes
    assert "state in" in first.description and first.name == "soft"
    with IsdR(first) as isdr:
        _, answer = isdr.call("AddInitialEim", {"eimConfigurationDataList": [{
            "eimId": "rig-test-eim", "eimFqdn": "127.0.0.1:1", "counterValue": 0,
            "eimPublicKeyData": ("eimCertificate", pki.eim_sign.cert_der)}]})
        assert answer[0] == "addInitialEimOk", answer
    first.close()
    second = open_backend(f"soft,state={state}", pki_dir=pki.directory)
    assert [c.eim_id for c in second.card.state.eims] == ["rig-test-eim"]


def test_serial_backend_is_the_gateway_modem_driver(card: SoftEuicc, pty_pair: tuple[str, str]) -> None:
    with backend_for("serial", card, pty_pair, quirks="echo,urc,max-apdu=64", options=",segment=64,timeout=3") as b:
        assert isinstance(b, SerialBackend) and isinstance(b.modem, ModemEuicc)
        assert b.name == "serial" and "CCHO/CGLA" in b.description and "segment 64" in b.description
        with IsdR(b) as isdr:
            raw, value = isdr.call("GetEUICCInfo2", {})    # > 255 bytes back: GET RESPONSE chaining
            assert len(raw) > 64 and value["svn"] == b"\x02\x05\x00"
            isdr.call("GetEimConfigurationData", {})
        assert b.device_info().imei is not None
        b.refresh("uicc-reset")
        with IsdR(b) as isdr:                               # the card answers again after the reset
            assert isdr.call("GetEID", {"tagList": b"\x5a"})[1]["eidValue"] == card.eid


def test_serial_backend_on_a_csim_only_modem(card: SoftEuicc, pty_pair: tuple[str, str]) -> None:
    with backend_for("serial", card, pty_pair, quirks="no-cgla", options=",timeout=3") as b:
        assert "CSIM" in b.description
        with IsdR(b) as isdr:
            assert isdr.call("GetEUICCInfo1", {})[1]["svn"] == b"\x02\x05\x00"


def test_counting_counts_every_apdu_and_its_time(card: SoftEuicc) -> None:
    ticks = iter(range(100))
    counting = Counting(SoftBackend(card), clock=lambda: float(next(ticks)))
    data, sw = split_response(counting.transmit(bytes.fromhex("0070000001")))
    assert sw == 0x9000 and counting.apdus == 1 and counting.seconds == 1.0
    counting.transmit(bytes((data[0], 0xA4, 4, 0, len(ISD_R_AID))) + ISD_R_AID)
    assert counting.apdus == 2 and counting.name == "soft"


async def test_async_backend_runs_the_card_off_the_event_loop_and_records_refreshes(card: SoftEuicc) -> None:
    backend = AsyncBackend(SoftBackend(card))
    response = await backend.transmit(bytes.fromhex("0070000001"))
    assert response[-2:] == b"\x90\x00"
    await backend.refresh("uicc-reset")
    assert backend.refreshes == ["uicc-reset"] and card.apdu.open_channels() == [0]


def test_pcsc_without_pyscard_or_reader_says_what_is_missing() -> None:
    try:
        readers = pcsc_readers()
    except CardUnavailable as exc:
        assert "pyscard" in str(exc) or "PC/SC" in str(exc)
        return
    if not readers:
        with pytest.raises(CardUnavailable, match="no PC/SC reader"):
            open_backend("pcsc")


class StandInConnection:
    """Stands in for pyscard's CardConnection (no reader on the build machine: a mock, and only
    of pyscard's calling convention): transmit(list of ints) -> (data, sw1, sw2), reconnect, disconnect."""

    def __init__(self, card: SoftEuicc) -> None:
        self.card = card
        self.resets = 0
        self.connected = True

    def transmit(self, apdu: list[int]) -> tuple[list[int], int, int]:
        if not self.connected:
            raise RuntimeError("Card not connected")
        response = self.card.transmit(bytes(apdu))
        return list(response[:-2]), response[-2], response[-1]

    def reconnect(self, disposition: int) -> None:
        self.resets += 1
        self.card.power_cycle()

    def disconnect(self) -> None:
        self.connected = False


async def test_pcsc_backend_runs_the_probe_through_pyscards_calling_convention(card: SoftEuicc, pki: RspPki) -> None:
    from hil.rig import RigOptions, run_scenario
    from hil.rig.backends import PcscBackend

    connection = StandInConnection(card)
    backend = PcscBackend(connection, "Stand-in Reader 00 00", atr=bytes.fromhex("3B9F96801F878031E073FE211B674A4C"))
    assert backend.name == "pcsc" and "Stand-in Reader" in backend.description and "3B9F" in backend.description
    result = await run_scenario(backend, RigOptions("probe", pki))
    assert result.ok, result.error
    assert result.card is not None and result.card.eid == card.eid
    backend.close()
    with pytest.raises(CardUnavailable, match="PC/SC transmit failed"):
        backend.transmit(bytes.fromhex("0070000001"))
