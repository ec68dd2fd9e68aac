"""`ipae-gateway decode` run as a real process on captured-style inputs."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from gateway.spec import codec, signed
from tests.spec.conftest import CERTIFICATES

REPO = Path(__file__).resolve().parents[2]
EID = bytes.fromhex("89049032123451234512345678901235")
ICCID = bytes.fromhex("98001032547698103214")


def decode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "decode", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def ok(*args: str) -> dict[str, object]:
    run = decode(*args)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    result = json.loads(run.stdout)
    assert isinstance(result, dict)
    return result


def test_store_data_command_as_logged_by_a_modem() -> None:
    # AT+CGLA trace style: the whole STORE DATA APDU, spaces between bytes
    result = ok("80 E2 91 00 03 BF 2E 00")
    assert result == {"type": "GetEuiccChallengeRequest", "value": {}}


def test_card_response_with_its_status_word() -> None:
    result = ok("BF2E128010" + "A1" * 16 + "9000")
    assert result == {"type": "GetEuiccChallengeResponse", "value": {"euiccChallenge": "a1" * 16}}


def test_esipa_get_eim_package_response_with_a_psmo() -> None:
    request = codec.encode("EuiccPackageRequest", {
        "euiccPackageSigned": {"eimId": "eim.example.com", "eidValue": EID, "counterValue": 12,
                               "euiccPackage": ("psmoList", [("enable", {"iccid": ICCID,
                                                                          "rollbackFlag": None})])},
        "eimSignature": bytes(range(64))})
    body = signed.wrap(0xBF4F, request)
    result = ok(body.hex(":"))
    assert result["type"] == "GetEimPackageResponse"
    package = result["value"]["euiccPackageRequest"]["euiccPackageSigned"]  # type: ignore[index]
    assert package["eidValue"] == EID.hex()
    assert package["euiccPackage"] == {"psmoList": [{"enable": {"iccid": ICCID.hex(), "rollbackFlag": None}}]}


def test_base64_body_of_a_provide_eim_package_result() -> None:
    result_der = codec.encode("EuiccPackageResult", ("euiccPackageErrorUnsigned", {"eimId": "eim"}))
    body = signed.provide_eim_package_result(EID, result_der)
    result = ok(base64.b64encode(body).decode())
    assert result == {"type": "ProvideEimPackageResult", "value": {
        "eidValue": EID.hex(),
        "eimPackageResult": {"euiccPackageResult": {"euiccPackageErrorUnsigned": {"eimId": "eim"}}}}}


def test_raw_der_file_with_certificates(tmp_path: Path) -> None:
    der = codec.encode("GetCertsResponse", ("certs", {"eumCertificate": CERTIFICATES[0],
                                                      "euiccCertificate": CERTIFICATES[1]}))
    path = tmp_path / "getcerts.der"
    path.write_bytes(der)
    result = ok(f"@{path}")
    assert result == {"type": "GetCertsResponse", "value": {"certs": {
        "eumCertificate": CERTIFICATES[0].hex(), "euiccCertificate": CERTIFICATES[1].hex()}}}


def test_hex_text_file_and_forced_type(tmp_path: Path) -> None:
    path = tmp_path / "ack.txt"
    path.write_text("bf53 06 80 01 05\n80 01 06\n")
    assert ok(f"@{path}") == {"type": "EimAcknowledgements", "value": [5, 6]}
    assert ok("--type", "EimAcknowledgements", "BF5300") == {"type": "EimAcknowledgements", "value": []}


def test_undecodable_input_exits_2_with_one_line() -> None:
    for bad in ("zz-not-data", "BF2E05800102", "DEADBEEF", "@/nonexistent/capture.der"):
        run = decode(bad)
        assert run.returncode == 2, bad
        assert run.stdout == ""
        assert run.stderr.count("\n") == 1 and run.stderr.startswith("ipae-gateway decode: ")
