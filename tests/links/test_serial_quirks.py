"""Real-modem quirks through the real socat pty, the emulator and the software eUICC behind it.

- hex-session: Sierra MC7455 / EM7590 answer +CCHO with a 64-bit hex handle, which the driver
  keeps as written for AT+CGLA / AT+CCHC;
- the class byte of AT+CGLA: 27.007 §8.45 has the modem set the logical-channel bits for the
  session, so the driver sends basic-channel CLA (`ModemConfig.cgla_cla="basic"`); a modem that
  passes CLA unchanged (emulator quirk cla-as-is) needs `cgla_cla="session"`;
- bare-cgla: Fibocom FM350-GL answers AT+CGLA without the +CGLA: prefix.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from gateway.errors import ConfigError, LocalProtocolError
from gateway.links.serial import ModemConfig
from gateway.links.serial.agent_backend import config_from_env
from gateway.spec import codec
from gateway.spec.apdu import CardError, channel_of
from hil.euicc import SoftEuicc
from hil.modem_emulator import ModemEmulator, Quirks
from hil.pki import RspPki
from tests.hil.test_euicc_support import Card, Order, download, iccid
from tests.links.conftest import echo_card
from tests.links.test_serial_modem import ModemCard, installed, modem_on, sent

pytestmark = pytest.mark.timeout(60)

_CGLA = re.compile(r'AT\+CGLA=([^,]+),[0-9]+,"([0-9A-F]+)"$')


def cgla_commands(emulator: ModemEmulator) -> list[tuple[str, bytes]]:
    """(session id as sent, command APDU as sent) of every AT+CGLA the driver wrote."""
    out = []
    for line in sent(emulator, "AT+CGLA="):
        m = _CGLA.match(line)
        assert m, line
        out.append((m.group(1), bytes.fromhex(m.group(2))))
    return out


def test_sierra_hex_session_handle_carries_a_whole_download(pty_pair: tuple[str, str], euicc: SoftEuicc,
                                                           pki: RspPki) -> None:
    with modem_on(pty_pair, euicc, "hex-session") as (modem, emu):
        order = Order(iccid(21))
        pir, _ = download(Card(ModemCard(modem, euicc.eid)), pki, order)  # type: ignore[arg-type]
        assert installed(euicc, order, pir)
        commands = cgla_commands(emu)
        handles = {session for session, _ in commands}
        assert len(handles) == 1 and re.fullmatch(r"[0-9a-f]{16}", handles.pop())  # as the modem wrote it
        assert all(channel_of(apdu[0]) == 0 for _, apdu in commands)  # the modem sets the channel bits
        assert not sent(emu, "AT+CSIM=")
    assert sent(emu, "AT+CCHC=") == [f"AT+CCHC={commands[0][0]}"]  # closed by its handle
    assert euicc.apdu.open_channels() == [0]


def test_modem_passing_cla_unchanged_needs_cgla_cla_session(pty_pair: tuple[str, str], euicc: SoftEuicc) -> None:
    with modem_on(pty_pair, euicc, "cla-as-is", ModemConfig(timeout_s=3.0, cgla_cla="session")) as (modem, emu):
        host = modem.open_channel()
        assert codec.decode("EUICCInfo1", modem.es10(bytes.fromhex("BF2000"), host))
        commands = cgla_commands(emu)
        assert commands and all(channel_of(apdu[0]) == int(session) != 0 for session, apdu in commands)
        modem.close_channel(host)
        # the 27.007 default against this modem: the card sees the basic channel, no ISD-R selected
        modem.config = ModemConfig(timeout_s=3.0)
        host = modem.open_channel()
        with pytest.raises(CardError):
            modem.es10(bytes.fromhex("BF2000"), host)
        assert channel_of(cgla_commands(emu)[-1][1][0]) == 0
        modem.close_channel(host)
    assert euicc.apdu.open_channels() == [0]


def test_cgla_cla_session_refuses_a_handle_that_is_no_channel_and_closes_it(
        pty_pair: tuple[str, str], euicc: SoftEuicc) -> None:
    with modem_on(pty_pair, euicc, "hex-session", ModemConfig(timeout_s=3.0, cgla_cla="session")) as (modem, emu):
        with pytest.raises(LocalProtocolError, match="cgla_cla=basic"):
            modem.open_channel()
        assert len(sent(emu, "AT+CCHC=")) == 1 and not emu.sessions
    assert euicc.apdu.open_channels() == [0]


def test_fibocom_bare_ccho_and_bare_cgla_answers_amid_urcs_carry_a_download(
        pty_pair: tuple[str, str], euicc: SoftEuicc, pki: RspPki) -> None:
    quirks = "bare-ccho,bare-cgla,urc,echo,fragment"
    with modem_on(pty_pair, euicc, quirks) as (modem, emu):
        order = Order(iccid(22))
        pir, _ = download(Card(ModemCard(modem, euicc.eid)), pki, order)  # type: ignore[arg-type]
        assert installed(euicc, order, pir)
        assert len(cgla_commands(emu)) > 10 and not sent(emu, "AT+CSIM=")
        assert {"RING", "+CEREG: 1,5"} <= set(modem.port.urcs)
        assert not any(re.fullmatch(r'[0-9]*,?"?[0-9A-Fa-f]{4,}"?', u) for u in modem.port.urcs)


def test_emulator_quirk_names_on_the_command_line() -> None:
    assert Quirks.parse("hex-session,cla-as-is,bare-cgla") == Quirks(hex_session=True, cla_as_is=True,
                                                                    bare_cgla=True)


@settings(max_examples=200, deadline=None)
@given(quirks=st.sampled_from(["hex-session", "cla-as-is", "bare-cgla", "hex-session,bare-cgla,bare-ccho"]),
       line=st.text(alphabet=st.characters(codec="latin-1"), max_size=80)
       | st.sampled_from(['AT+CGLA=000000000385a7cf,8,"80E29100"', 'AT+CGLA="000000000385A7CF",8,"80E29100"',
                          "AT+CCHC=000000000385a7cf", "AT+CCHC=" + "f" * 40, 'AT+CGLA=zz,8,"80E29100"',
                          'AT+CGLA=1,8,"81E29100"', "AT+CCHC=1"]))
def test_emulator_with_the_new_quirks_answers_any_line_with_a_final_result_code(quirks: str, line: str) -> None:
    emulator = ModemEmulator(echo_card(), Quirks.parse(quirks))
    emulator.handle("AT+CMEE=1")
    emulator.handle('AT+CCHO="A0000005591010FFFFFFFF8900000100"')
    out = emulator.handle(line).decode("latin-1")
    assert out.endswith(("\r\nOK\r\n", "\r\nERROR\r\n")) or "+CME ERROR:" in out.splitlines()[-1]


def test_agent_backend_reads_the_cgla_class_byte_mode() -> None:
    env = {"IPAE_MODEM_PORT": "/dev/ttyUSB2"}
    assert config_from_env(env)[2].cgla_cla == "basic"
    assert config_from_env({**env, "IPAE_MODEM_CGLA_CLA": "session"})[2].cgla_cla == "session"
    with pytest.raises(ConfigError, match="IPAE_MODEM_CGLA_CLA"):
        config_from_env({**env, "IPAE_MODEM_CGLA_CLA": "channel"})
