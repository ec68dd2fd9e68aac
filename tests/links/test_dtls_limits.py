"""DTLS-PSK limits of the installed CoAP/DTLS stack (aiocoap 0.4 + DTLSSocket 0.2.3 / tinydtls).

What these tests pin (details, figures and the cause: docs/dtls-limits.md):

- a PSK of at most 16 bytes and a PSK identity of at most 32 bytes work end to end;
- a longer PSK never completes a handshake: from 19 bytes the tinydtls client gives up after
  its ClientKeyExchange and aiocoap's request just times out; the tinydtls server answers
  a standard DTLS client with a fatal internal_error alert; and with a 59..64-byte key
  configured, the server process dies (SIGSEGV) as soon as any client presents that
  identity, even with a wrong key;
- a longer identity never completes a handshake either;
- what the gateway configuration accepts must lie within those limits.

Cases that make DTLSSocket overflow its 16-byte key buffer (every PSK longer than 16 bytes)
run in a child process (this file run as a script), so that the memory corruption cannot
reach the pytest process. Everything runs on real UDP sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiocoap
import aiocoap.credentials
import aiocoap.resource
import pytest

from gateway.service.demo import free_udp_pair

LONGEST_PSK = 16        # DTLS_PSK_MAX_KEY_LEN (= DTLS_KEY_LENGTH) in the bundled tinydtls
LONGEST_IDENTITY = 32   # DTLS_PSK_MAX_CLIENT_IDENTITY_LEN
CHILD_TIMEOUT_S = 30.0
HANDSHAKE_WAIT_S = 3.0  # a loopback handshake takes milliseconds; a failed one never ends

pytestmark = pytest.mark.timeout(120)
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None,
                                   reason="needs the openssl command line tool (a non-tinydtls DTLS client)")

class _Echo(aiocoap.resource.Resource):  # type: ignore[misc]
    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload)


async def _start_server(psk: bytes, identity: bytes, port: int) -> aiocoap.Context:
    """aiocoap's tinydtls_server, credentials as gateway/links/coap.py hands them over."""
    credentials = aiocoap.credentials.CredentialsMap()
    credentials[":device"] = aiocoap.credentials.DTLS(psk=psk, client_identity=identity)
    site = aiocoap.resource.Site()
    site.add_resource(["echo"], _Echo())
    # the tinydtls_server transport adds the coaps/coap port difference (1) to the bind port
    return await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", port - 1), transports=["tinydtls_server"], server_credentials=credentials)


async def aiocoap_round_trip(psk: bytes, identity: bytes) -> str:
    """One POST from aiocoap's tinydtls client to aiocoap's tinydtls server: "ok", "timeout" or
    "error: ..."."""
    port = free_udp_pair()
    server = await _start_server(psk, identity, port)
    client = await aiocoap.Context.create_client_context(transports=["tinydtls"])
    client.client_credentials[f"coaps://127.0.0.1:{port}/*"] = aiocoap.credentials.DTLS(
        psk=psk, client_identity=identity)
    try:
        request = aiocoap.Message(code=aiocoap.POST, uri=f"coaps://127.0.0.1:{port}/echo", payload=b"ping")
        response = await asyncio.wait_for(client.request(request).response, HANDSHAKE_WAIT_S)
        return "ok" if (response.code, response.payload) == (aiocoap.CHANGED, b"ping") else f"error: {response}"
    except asyncio.TimeoutError:
        return "timeout"
    except aiocoap.error.Error as exc:
        return f"error: {exc!r}"
    finally:
        await client.shutdown()
        await server.shutdown()


async def openssl_round_trip(psk: bytes, identity: bytes, client_psk: bytes) -> str:
    """One CoAP POST from OpenSSL's DTLS 1.2 client (a standard, non-tinydtls device stack) to
    aiocoap's tinydtls server: "ok" or "failed: <openssl's alert line>"."""
    port = free_udp_pair()
    server = await _start_server(psk, identity, port)
    # CON POST /echo, message id 0x1234, no token, payload "ping" (RFC 7252 §3)
    datagram = bytes([0x40, 0x02, 0x12, 0x34, 0xB4]) + b"echo" + b"\xff" + b"ping"
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}", "-cipher", "PSK-AES128-CCM8",
        "-psk", client_psk.hex(), "-psk_identity", identity.decode(), "-quiet", "-ign_eof",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(datagram)
        await proc.stdin.drain()
        try:
            answer = await asyncio.wait_for(proc.stdout.read(64), HANDSHAKE_WAIT_S)
        except asyncio.TimeoutError:
            answer = b""
    finally:
        if proc.returncode is None:
            proc.kill()
        _, err = await proc.communicate()
        await server.shutdown()
    if len(answer) > 1 and answer[1] == 0x44 and answer.endswith(b"ping"):  # 2.04 Changed
        return "ok"
    alerts = [line for line in err.decode(errors="replace").splitlines() if "alert" in line]
    return "failed: " + (alerts[0] if alerts else "no answer")


def run_child(mode: str, psk_len: int, identity_len: int, *, wrong_key: bool = False
              ) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, __file__, mode, str(psk_len), str(identity_len)] + (["wrong-key"] if wrong_key else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                          cwd=Path(__file__).resolve().parent)


def child_result(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("result: ")]
    assert lines, f"child exited {proc.returncode} without a result; stderr: {proc.stderr[-2000:]}"
    return lines[-1].removeprefix("result: ")


def key_of(length: int) -> bytes:
    return bytes((0xA5 + i) & 0xFF for i in range(length))


def identity_of(length: int) -> bytes:
    return (b"89049032123451234512345678901235" * 5)[:length]  # EID digits, as fleets name devices


# --- what works -------------------------------------------------------------------------------


async def test_a_16_byte_psk_with_a_32_byte_identity_completes_a_coaps_request() -> None:
    assert await aiocoap_round_trip(key_of(LONGEST_PSK), identity_of(LONGEST_IDENTITY)) == "ok"


async def test_a_one_byte_identity_and_a_short_psk_complete_a_coaps_request() -> None:
    assert await aiocoap_round_trip(key_of(8), identity_of(1)) == "ok"


@needs_openssl
def test_the_gateway_side_serves_a_standard_dtls_client_with_a_16_byte_psk_and_32_byte_identity() -> None:
    assert child_result(run_child("openssl", LONGEST_PSK, LONGEST_IDENTITY)) == "ok"


# --- what does not ----------------------------------------------------------------------------


def test_a_19_byte_psk_times_out_at_the_client_without_any_error() -> None:
    # 19 is the first length whose RFC 4279 premaster secret (2 + N + 2 + N bytes) no longer
    # fits tinydtls' 40-byte key block; 17 and 18 pass only by overflowing DTLSSocket's
    # 16-byte key buffer (docs/dtls-limits.md), so they are not a supported range.
    assert child_result(run_child("aiocoap", 19, 10)) == "timeout"


def test_a_32_byte_psk_times_out_at_the_client_without_any_error() -> None:
    assert child_result(run_child("aiocoap", 32, 10)) == "timeout"


def test_a_33_byte_identity_never_completes_a_coaps_request() -> None:
    assert child_result(run_child("aiocoap", 16, LONGEST_IDENTITY + 1)) != "ok"


@needs_openssl
def test_the_gateway_side_refuses_a_standard_dtls_client_with_a_19_byte_psk_by_internal_error() -> None:
    result = child_result(run_child("openssl", 19, 10))
    assert result.startswith("failed: ") and "internal error" in result


@needs_openssl
def test_a_64_byte_psk_on_the_gateway_side_crashes_the_server_even_for_a_client_with_a_wrong_key() -> None:
    proc = run_child("openssl", 64, 10, wrong_key=True)
    assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stdout, proc.stderr[-2000:])


# --- the configuration against the stack ------------------------------------------------------


def _config_accepts(etc: Path, psk_len: int, identity_len: int) -> bool:
    from gateway.config.load import load_config
    from gateway.errors import ConfigError

    identity = identity_of(identity_len).decode()
    creds = etc / "credentials.toml"
    creds.write_text(f'[dtls_psk]\n"{identity}" = "{key_of(psk_len).hex()}"\n')
    os.chmod(creds, 0o600)
    (etc / "devices.d" / "fleet.toml").write_text(
        f'[[device]]\neid = "89049032123451234512345678901235"\nlink = "coap"\nidentity = "{identity}"\n')
    try:
        load_config(etc / "gateway.toml")
    except ConfigError:
        return False
    return True


def _etc(tmp_path: Path) -> Path:
    shipped = Path(__file__).resolve().parents[2] / "config" / "gateway.toml"
    etc = tmp_path / "etc"
    (etc / "devices.d").mkdir(parents=True)
    text = shipped.read_text().replace('state_dir = "/var/lib/ipae-gateway"', f'state_dir = "{tmp_path / "state"}"')
    (etc / "gateway.toml").write_text(text)
    return etc


def test_the_shipped_config_accepts_a_16_byte_psk_for_a_32_byte_coap_identity(tmp_path: Path) -> None:
    assert _config_accepts(_etc(tmp_path), LONGEST_PSK, LONGEST_IDENTITY)


def test_every_psk_and_identity_length_the_config_accepts_completes_a_coaps_request(tmp_path: Path) -> None:
    etc = _etc(tmp_path)
    psk_lengths = [n for n in range(1, 81) if _config_accepts(etc, n, 8)]
    identity_lengths = [n for n in range(1, 161) if _config_accepts(etc, LONGEST_PSK, n)]
    assert psk_lengths and identity_lengths
    # The limits are thresholds: the extremes the config accepts stand for every length between.
    outcomes = {
        f"psk {max(psk_lengths)} B": child_result(run_child("aiocoap", max(psk_lengths), 8)),
        f"identity {max(identity_lengths)} B": child_result(run_child("aiocoap", LONGEST_PSK, max(identity_lengths))),
    }
    assert outcomes == {k: "ok" for k in outcomes}
    assert max(psk_lengths) <= LONGEST_PSK and max(identity_lengths) <= LONGEST_IDENTITY


if __name__ == "__main__":
    # child mode: <aiocoap|openssl> PSK_LEN IDENTITY_LEN [wrong-key]
    mode, psk_len, identity_len = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    psk, identity = key_of(psk_len), identity_of(identity_len)
    if mode == "aiocoap":
        outcome = asyncio.run(aiocoap_round_trip(psk, identity))
    else:
        client_psk = bytes(16) if sys.argv[4:] == ["wrong-key"] else psk
        outcome = asyncio.run(openssl_round_trip(psk, identity, client_psk))
    print("result:", outcome, flush=True)
