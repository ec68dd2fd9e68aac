"""The serial driver against the AT modem emulator over a real socat pty pair, software eUICC behind.

Each test gets its own pty pair (socat) in tmp_path: the driver (pyserial) on one end, the
emulator (hil.modem_emulator, in a thread or as `python -m hil.modem_emulator`) on the other,
and hil.euicc's SoftEuicc behind the emulator, so every APDU is answered by the real card
implementation, crypto included.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from gateway.errors import TransportError, TransportTimeout
from gateway.links import protocol as p
from gateway.links.coap import CoapServer
from gateway.links.memory import MemoryLink
from gateway.links.serial import AsyncModemEuicc, ModemConfig, ModemEuicc
from gateway.links.serial.errors import ModemCommandRejected, SimNotReady
from gateway.links.serial.local import LocalModemDevice
from gateway.spec import codec
from gateway.spec.apdu import ISD_R_AID, FileNotFound, store_data
from hil.agent import Agent
from hil.agent.memory_transport import MemoryAgentTransport
from hil.euicc import SoftEuicc
from hil.modem_emulator import EmulatorThread, ModemEmulator, Quirks
from hil.pki import RspPki
from tests.hil.test_euicc_support import Card, Order, download, iccid
from tests.links.conftest import ScriptedHandler, echo_card, eid_of

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]


class ModemCard:
    """The modem driver under the test-side IPA driver (tests.hil.test_euicc_support.Card)."""

    def __init__(self, modem: ModemEuicc, eid: bytes) -> None:
        self.modem = modem
        self.eid = eid

    def transmit(self, apdu: bytes) -> bytes:
        return self.modem.transmit(apdu)


@contextmanager
def modem_on(pty_pair: tuple[str, str], card: object, quirks: str = "",
             config: ModemConfig = ModemConfig(timeout_s=3.0)) -> Iterator[tuple[ModemEuicc, ModemEmulator]]:
    emulator = ModemEmulator(card, Quirks.parse(quirks))  # type: ignore[arg-type]
    with EmulatorThread(emulator, pty_pair[1], idle_urc_s=0.05):
        modem = ModemEuicc.open(pty_pair[0], config)
        try:
            yield modem, emulator
        finally:
            modem.close()


def sent(emulator: ModemEmulator, prefix: str) -> list[str]:
    """The command lines starting with `prefix`, test commands (``=?``) left out."""
    return [c for c in emulator.commands if c.upper().startswith(prefix) and not c.endswith("=?")]


def max_apdu_data(emulator: ModemEmulator) -> int:
    """The largest Lc the modem was asked to carry (AT+CGLA / AT+CSIM)."""
    sizes = [0]
    for c in emulator.commands:
        m = re.search(r'"?([0-9A-F]{10,})"?$', c)
        if m and c.upper().startswith(("AT+CGLA", "AT+CSIM")):
            sizes.append(int(m.group(1)[8:10], 16) if len(m.group(1)) > 10 else 0)
    return max(sizes)


def installed(euicc: SoftEuicc, order: Order, pir: bytes) -> bool:
    result = codec.decode("ProfileInstallationResult", pir)["profileInstallationResultData"]["finalResult"]
    return result[0] == "successResult" and [pr.iccid for pr in euicc.profiles] == [order.iccid]


# --- CCHO / CGLA ------------------------------------------------------------------------------


@pytest.mark.parametrize(("ipa_segment", "modem_segment"), [(255, 255), (255, 128), (255, 64), (64, 64)])
def test_profile_download_through_cgla_with_segment_size(pty_pair: tuple[str, str], euicc: SoftEuicc,
                                                         pki: RspPki, ipa_segment: int, modem_segment: int) -> None:
    quirks = f"max-apdu={modem_segment}"
    with modem_on(pty_pair, euicc, quirks, ModemConfig(segment_size=modem_segment, timeout_s=3.0)) as (modem, emu):
        order = Order(iccid(1))
        pir, _ = download(Card(ModemCard(modem, euicc.eid), segment_size=ipa_segment), pki, order)  # type: ignore[arg-type]
        assert installed(euicc, order, pir)
        assert modem.cgla_supported and not sent(emu, "AT+CSIM=")
        assert sent(emu, "AT+CCHO=") == [f'AT+CCHO="{ISD_R_AID.hex().upper()}"']
        assert max_apdu_data(emu) <= modem_segment
        assert (modem.stats.resegmented_blocks > 0) is (modem_segment < ipa_segment)
        assert modem.stats.get_responses > 0  # AuthenticateServer's answer is longer than one APDU


def test_get_response_chaining_with_a_capped_le(pty_pair: tuple[str, str], euicc: SoftEuicc) -> None:
    with modem_on(pty_pair, euicc, config=ModemConfig(max_le=100, timeout_s=3.0)) as (modem, emu):
        host = modem.open_channel()
        info2 = modem.es10(bytes.fromhex("BF2200"), host)
        assert codec.decode("EUICCInfo2", info2)["profileVersion"]
        get_responses = [c for c in sent(emu, "AT+CGLA=") if '"00C00000' in c]  # basic CLA: the modem sets it
        assert get_responses and all(c.endswith('64"') for c in get_responses[:-1])  # Le 0x64 = 100
        modem.close_channel(host)
        assert sent(emu, "AT+CCHC=") == [f"AT+CCHC={host}"]
        assert euicc.apdu.open_channels() == [0]


def test_modem_that_chains_get_response_itself_is_detected(pty_pair: tuple[str, str], euicc: SoftEuicc,
                                                           pki: RspPki) -> None:
    with modem_on(pty_pair, euicc, "auto-get-response") as (modem, emu):
        order = Order(iccid(2))
        pir, _ = download(Card(ModemCard(modem, euicc.eid)), pki, order)  # type: ignore[arg-type]
        assert installed(euicc, order, pir)
        assert modem.modem_chains_responses and modem.stats.get_responses == 0
        assert not any('"01C0' in c or '"81C0' in c for c in emu.commands)


# --- CSIM fallback ----------------------------------------------------------------------------


def test_csim_fallback_when_the_modem_has_no_cgla(pty_pair: tuple[str, str], euicc: SoftEuicc, pki: RspPki) -> None:
    with modem_on(pty_pair, euicc, "no-cgla,max-apdu=128", ModemConfig(segment_size=128, timeout_s=3.0)) \
            as (modem, emu):
        assert not modem.cgla_supported and modem.csim_supported
        order = Order(iccid(3))
        pir, _ = download(Card(ModemCard(modem, euicc.eid)), pki, order)  # type: ignore[arg-type]
        assert installed(euicc, order, pir)
        assert not sent(emu, "AT+CGLA=") and not sent(emu, "AT+CCHO=")
        csim = sent(emu, "AT+CSIM=")
        assert csim[0] == 'AT+CSIM=10,"0070000001"'  # MANAGE CHANNEL open, by the driver itself
        assert csim[1].startswith('AT+CSIM=44,"01A40400')  # SELECT ISD-R on channel 1
        assert max_apdu_data(emu) <= 128


def test_ccho_refused_for_the_isdr_falls_back_to_csim_for_that_channel(pty_pair: tuple[str, str],
                                                                       euicc: SoftEuicc) -> None:
    with modem_on(pty_pair, euicc, "ccho-refused") as (modem, emu):
        host = modem.open_channel()
        assert codec.decode("EUICCInfo1", modem.es10(bytes.fromhex("BF2000"), host))
        assert modem.stats.csim_fallbacks == 1 and sent(emu, "AT+CCHO=")
        assert sent(emu, "AT+CSIM=") and not sent(emu, "AT+CGLA=")


def test_unknown_aid_through_csim_is_the_cards_file_not_found(pty_pair: tuple[str, str], euicc: SoftEuicc) -> None:
    with modem_on(pty_pair, euicc, "no-cgla") as (modem, _):
        with pytest.raises(FileNotFound):
            modem.open_channel(bytes.fromhex("A000000559101000000000000000AA"))
        assert euicc.apdu.open_channels() == [0]


# --- quirks: echo, URCs, formats --------------------------------------------------------------


def test_sticky_echo_urcs_fragments_and_odd_hex_formats(pty_pair: tuple[str, str], euicc: SoftEuicc,
                                                        pki: RspPki) -> None:
    quirks = "echo,urc,fragment,unquoted,lowercase,bare-ccho,max-apdu=64"
    with modem_on(pty_pair, euicc, quirks, ModemConfig(segment_size=64, timeout_s=3.0)) as (modem, emu):
        order = Order(iccid(4))
        pir, _ = download(Card(ModemCard(modem, euicc.eid)), pki, order)  # type: ignore[arg-type]
        assert installed(euicc, order, pir)
        urcs = set(modem.port.urcs)
        assert {"RING", "+CEREG: 1,5", '+QIND: "csq",20,99'} <= urcs
        assert emu.quirks.echo and not emu.echo  # ATE0 was sent; the modem kept echoing anyway


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("quirks", ["max-apdu=64", "max-apdu=64,cme-text"])
def test_cme_error_for_an_oversized_apdu_is_a_typed_rejection(pty_pair: tuple[str, str], euicc: SoftEuicc,
                                                              quirks: str) -> None:
    with modem_on(pty_pair, euicc, quirks) as (modem, _):
        host = modem.open_channel()
        payload = b"\xbf\x2d\x81\x80" + bytes(128)
        with pytest.raises(ModemCommandRejected) as info:
            modem.es10(payload, host)
        assert info.value.cme == 50 and not info.value.retryable and isinstance(info.value, TransportError)
        modem.config = ModemConfig(segment_size=64)  # the fix: a smaller segment size
        assert modem.es10(payload, host)  # now the request reaches the card, which answers it


def test_sim_switched_off_is_sim_not_ready_and_retryable(pty_pair: tuple[str, str], euicc: SoftEuicc) -> None:
    with modem_on(pty_pair, euicc) as (modem, _):
        modem.port.command("AT+CFUN=0")
        with pytest.raises(SimNotReady) as info:
            modem.open_channel()
        assert info.value.cme == 10 and info.value.retryable
        modem.port.command("AT+CFUN=1")
        assert modem.open_channel() == 1


def test_modem_that_stops_answering_raises_transport_timeout(pty_pair: tuple[str, str], euicc: SoftEuicc) -> None:
    with modem_on(pty_pair, euicc, "mute-after=8", ModemConfig(timeout_s=0.5)) as (modem, _):
        host = modem.open_channel()
        started = time.monotonic()
        with pytest.raises(TransportTimeout):
            for _ in range(5):
                modem.es10(bytes.fromhex("BF2000"), host)
        assert time.monotonic() - started < 3


def test_late_answer_after_a_timeout_is_not_taken_for_the_next_reply(pty_pair: tuple[str, str],
                                                                     euicc: SoftEuicc) -> None:
    with modem_on(pty_pair, euicc, "late=8", ModemConfig(timeout_s=0.4)) as (modem, emu):
        host = modem.open_channel()  # command lines 1-6 start the modem, 7 is AT+CCHO
        with pytest.raises(TransportTimeout):
            modem.es10(bytes.fromhex("BF2000"), host)  # line 8 answers after a second
        info1 = modem.es10(bytes.fromhex("BF2000"), host)  # resync first, then a fresh exchange
        assert codec.decode("EUICCInfo1", info1)["euiccCiPKIdListForSigning"]
        assert "AT+CFUN?" in emu.commands
        assert any(u.startswith("+CGLA:") for u in modem.port.urcs)  # the late answer, set aside


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="latin-1"), max_size=120)
       | st.sampled_from(["AT+CGLA=1,8,\"81E29100\"", "AT+CSIM=2,\"00\"", "AT+CCHO=\"\"", "AT+CCHC=99",
                          "AT+CGLA=1,4,\"FFFF\"", "AT+CMEE=9", "AT+CFUN=7", "AT+CSIM=12,\"FF7000000100\"",
                          "AT+CGLA=" + "9" * 5000 + ",4,\"0000\"", "AT+CCHC=" + "1" * 5000, "AT+CFUN=1,1"]))
def test_emulator_answers_any_command_line_with_a_final_result_code(line: str) -> None:
    emulator = ModemEmulator(echo_card())
    emulator.handle("AT+CMEE=1")
    lines = [x for x in emulator.handle(line).decode("latin-1").split("\r\n") if x]
    # after the final result code only unsolicited lines: the boot messages of a reset (AT+CFUN=1,1)
    while lines and lines[-1] in ("RDY", "+CPIN: READY", "SMS DONE", "PB DONE"):
        lines.pop()
    assert lines and (lines[-1] in ("OK", "ERROR") or lines[-1].startswith("+CME ERROR:")), lines


# --- the device agent and the gateway-side device ---------------------------------------------


def es10_batch(batch_id: int, refresh: str | None = None) -> p.Batch:
    steps = tuple(p.Step(tuple(store_data(bytes.fromhex(req)))) for req in ("BF2000", "BF2200", "BF2D00"))
    return p.Batch(batch_id, steps, aid=ISD_R_AID, refresh=refresh)


def check_es10_results(result: p.BatchResult) -> None:
    assert result.stopped is None
    assert [r.sw for r in result.results] == [0x9000] * 3
    assert codec.decode("EUICCInfo1", result.results[0].data)
    assert codec.decode("EUICCInfo2", result.results[1].data)
    assert codec.decode("ProfileInfoListResponse", result.results[2].data) is not None


async def test_agent_runs_a_device_link_batch_on_the_serial_backend(pty_pair: tuple[str, str],
                                                                    euicc: SoftEuicc) -> None:
    with modem_on(pty_pair, euicc, "urc,echo", ModemConfig(segment_size=64, timeout_s=3.0)) as (modem, emu):
        handler = ScriptedHandler(batches={euicc.eid: [es10_batch(1), es10_batch(2, refresh="uicc-reset")]})
        agent = Agent(Agent.make_status(euicc.eid), AsyncModemEuicc(modem),
                      MemoryAgentTransport(MemoryLink(handler), euicc.eid))
        report = await agent.run_session()
        assert report.transport_error is None and report.idle_after_s == handler.idle_s
        first, second = handler.results_for(euicc.eid)
        check_es10_results(first)
        check_es10_results(second)
        assert len(sent(emu, "AT+CCHO=")) == len(sent(emu, "AT+CCHC=")) == 2
        assert sent(emu, "AT+CFUN=") == ["AT+CFUN=0", "AT+CFUN=1"]
        assert euicc.apdu.open_channels() == [0]


async def test_gateway_side_modem_runs_the_session_itself(pty_pair: tuple[str, str], euicc: SoftEuicc) -> None:
    with modem_on(pty_pair, euicc, "urc") as (modem, emu):
        handler = ScriptedHandler(batches={euicc.eid: [es10_batch(7, refresh="modem-reset")]})
        device = LocalModemDevice(AsyncModemEuicc(modem), handler, euicc.eid)
        session = await device.run_session()
        hello = handler.uplinks[0][1]
        assert isinstance(hello, p.Hello)
        assert (hello.status.imei, hello.status.plmn, hello.status.signal_dbm) == ("356938035643809", "00101", -73)
        [result] = session.results
        check_es10_results(result)
        assert session.idle_after_s == handler.idle_s and session.exchanges == 2
        assert "AT+CFUN=1,1" in emu.commands and emu.echo  # the reset turned echo back on: tolerated
        host = modem.open_channel()  # the modem still works after its reset
        assert modem.es10(bytes.fromhex("BF2000"), host)
        assert {"RDY", "+CPIN: READY", "SMS DONE", "PB DONE"} <= set(modem.port.urcs)


async def test_a_stop_rule_and_a_card_error_end_the_local_batch(pty_pair: tuple[str, str], euicc: SoftEuicc) -> None:
    with modem_on(pty_pair, euicc) as (modem, _):
        device = LocalModemDevice(AsyncModemEuicc(modem), ScriptedHandler(), euicc.eid)
        bad = p.Step(tuple(store_data(bytes.fromhex("BF7F00"))))  # no such ES10 function
        steps = (p.Step(tuple(store_data(bytes.fromhex("BF2000")))), bad,
                 p.Step(tuple(store_data(bytes.fromhex("BF2200")))))
        result = await device.run_batch(p.Batch(1, steps, aid=ISD_R_AID))
        assert result.stopped == p.STOPPED_SW and len(result.results) == 2 and result.results[1].sw != 0x9000
        unknown = await device.run_batch(p.Batch(2, steps, aid=bytes.fromhex("A0000005591010000000000000AA")))
        assert unknown.stopped == p.STOPPED_CARD and unknown.results == ()
        assert euicc.apdu.open_channels() == [0]


# --- the emulator's command line --------------------------------------------------------------


def test_emulator_command_line_serves_a_download_and_keeps_the_state_file(
        pty_pair: tuple[str, str], pki: RspPki, tmp_path: Path) -> None:
    state = tmp_path / "euicc-state.json"
    eid = pki.eid_bytes.hex().upper()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "hil.modem_emulator", "--pty", pty_pair[1], "--pki",
                             str(pki.directory), "--eid", eid, "--state", str(state), "--quirks",
                             "echo,urc,max-apdu=128"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=REPO)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"modem emulator ready")
        with ModemEuicc.open(pty_pair[0], ModemConfig(segment_size=128, timeout_s=5.0)) as modem:
            order = Order(iccid(5))
            pir, _ = download(Card(ModemCard(modem, pki.eid_bytes)), pki, order)  # type: ignore[arg-type]
            assert codec.decode("ProfileInstallationResult", pir)["profileInstallationResultData"][
                "finalResult"][0] == "successResult"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        assert proc.stdout is not None
    assert proc.returncode == 0, err.decode()
    assert [pr.iccid for pr in SoftEuicc(pki, pki.eid_bytes, state).profiles] == [order.iccid]


def test_emulator_refuses_unknown_quirks() -> None:
    with pytest.raises(ValueError, match="unknown quirk"):
        Quirks.parse("echo,teleport")
    assert Quirks.parse("max-apdu=100,no-cgla") == Quirks(max_apdu=100, no_cgla=True)


# --- the agent's command line on a modem, over CoAP/DTLS ----------------------------------------


async def test_agent_command_line_with_the_modem_backend_over_dtls(
        pty_pair: tuple[str, str], pki: RspPki, coap_server: CoapServer, handler: ScriptedHandler) -> None:
    euicc = SoftEuicc(pki, eid_of(4))
    handler.batches[eid_of(4)] = [es10_batch(11)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "IPAE_MODEM_PORT": pty_pair[0], "IPAE_MODEM_SEGMENT_SIZE": "64"}
    emulator = ModemEmulator(euicc, Quirks.parse("echo,urc,max-apdu=64"))
    with EmulatorThread(emulator, pty_pair[1], idle_urc_s=0.05):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hil.agent", "--transport", "coap", "--port",
            str(coap_server._config.dtls_port), "--eid", eid_of(4).hex(), "--identity", "dev4",
            "--psk-hex", b"psk-of-device-4".hex(), "--backend", "gateway.links.serial.agent_backend:make_backend",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO)
        out, err = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out.decode().splitlines()[-1])["batches"] == 1
    (result,) = handler.results_for(eid_of(4))
    check_es10_results(result)
    assert sent(emulator, "AT+CCHO=") and sent(emulator, "AT+CCHC=")


def test_agent_backend_configuration_errors_name_the_variable() -> None:
    from gateway.errors import ConfigError
    from gateway.links.serial.agent_backend import config_from_env

    with pytest.raises(ConfigError, match="IPAE_MODEM_PORT"):
        config_from_env({})
    with pytest.raises(ConfigError, match="IPAE_MODEM_SEGMENT_SIZE"):
        config_from_env({"IPAE_MODEM_PORT": "/dev/null", "IPAE_MODEM_SEGMENT_SIZE": "big"})
    with pytest.raises(ConfigError, match="IPAE_MODEM_MODE"):
        config_from_env({"IPAE_MODEM_PORT": "/dev/null", "IPAE_MODEM_MODE": "telepathy"})
    device, baud, config = config_from_env({"IPAE_MODEM_PORT": "/dev/ttyUSB2", "IPAE_MODEM_SEGMENT_SIZE": "128",
                                            "IPAE_MODEM_MODE": "csim"})
    assert (device, baud, config.segment_size, config.mode) == ("/dev/ttyUSB2", 115200, 128, "csim")


async def test_closing_the_async_modem_closes_its_open_channels_on_the_card(pty_pair: tuple[str, str],
                                                                          euicc: SoftEuicc) -> None:
    with modem_on(pty_pair, euicc) as (modem, emu):
        backend = AsyncModemEuicc(modem)
        await backend.open_channel()
        assert len(euicc.apdu.open_channels()) == 2
        await backend.close()
        assert euicc.apdu.open_channels() == [0]
        assert len(sent(emu, "AT+CCHC=")) == 1
