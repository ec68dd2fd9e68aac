"""The codec (Contract 1): hand-built vectors, name resolution, certificates, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.errors import DecodeError, LocalProtocolError
from gateway.spec import codec
from tests.spec.conftest import CERTIFICATES

EID = bytes.fromhex("89049032123451234512345678901235")
ICCID = bytes.fromhex("98001032547698103214")


def test_get_eim_package_request_matches_a_hand_built_vector() -> None:
    # BF4F { 5A(16) EID, 80 00 notifyStateChange, 81 01 03 stateChangeCause=local, 82 03 rPLMN }
    expected = bytes.fromhex("BF4F1C" "5A10" + EID.hex() + "8000" "810103" "820362F210")
    value = {"eidValue": EID, "notifyStateChange": None, "stateChangeCause": 3,
             "rPLMN": bytes.fromhex("62F210")}
    assert codec.encode("GetEimPackageRequest", value) == expected
    assert codec.decode("GetEimPackageRequest", expected) == value


def test_esipa_wrapper_alternative_keeps_the_message_tag() -> None:
    # the CHOICE alternative getEimPackageResponse [79] is the BF4F message itself
    der = codec.encode("EsipaMessageFromEimToIpa", ("getEimPackageResponse", ("eimPackageError", 1)))
    assert der == bytes.fromhex("BF4F03020101")
    assert codec.decode("GetEimPackageResponse", der) == ("eimPackageError", 1)


def test_tagged_choice_under_its_own_tag_is_not_doubled() -> None:
    # ProfileRollbackResponse.eUICCPackageResult [81] EuiccPackageResult ([81] CHOICE): one BF51
    value = {"cmdResult": 0, "eUICCPackageResult": ("euiccPackageErrorUnsigned", {"eimId": "a"})}
    assert codec.encode("ProfileRollbackResponse", value) == bytes.fromhex("BF580B020100BF5105A203800161")


def test_cancel_session_response_is_explicitly_wrapped_in_the_esipa_request() -> None:
    value = {"transactionId": b"\x01", "cancelSessionResponse": ("cancelSessionResponseError", 5)}
    assert codec.encode("CancelSessionRequestEsipa", value) == bytes.fromhex("BF410B800101A106BF4103810105")


def test_psmo_enable_with_rollback_flag() -> None:
    value = {"euiccPackageSigned": {"eimId": "e", "eidValue": EID, "counterValue": 1,
                                    "euiccPackage": ("psmoList", [("enable", {"iccid": ICCID,
                                                                              "rollbackFlag": None})])},
             "eimSignature": bytes(64)}
    der = codec.encode("EuiccPackageRequest", value)
    assert der.startswith(bytes.fromhex("BF51"))
    assert bytes.fromhex("A30E5A0A" + ICCID.hex() + "0500") in der
    assert codec.decode("EuiccPackageRequest", der) == value


def test_bare_names_resolve_to_the_sgp32_form_first() -> None:
    assert codec.resolve("EUICCInfo2") == ("SGP32Definitions", "EUICCInfo2")
    assert codec.resolve("RSPDefinitions.EUICCInfo2") == ("RSPDefinitions", "EUICCInfo2")
    assert codec.resolve("GetEuiccChallengeRequest") == ("RSPDefinitions", "GetEuiccChallengeRequest")
    # the SGP.32 PrepareDownloadResponse has the compact alternative, SGP.22's has not
    compact = ("compactDownloadResponseOk", {"compactEuiccSigned2": {}, "euiccSignature2": bytes(64)})
    assert codec.decode("PrepareDownloadResponse", codec.encode("PrepareDownloadResponse", compact)) == compact
    with pytest.raises(LocalProtocolError):
        codec.encode("RSPDefinitions.PrepareDownloadResponse", compact)


def test_certificate_value_is_the_exact_der() -> None:
    eum, euicc = CERTIFICATES
    der = codec.encode("GetCertsResponse", ("certs", {"eumCertificate": eum, "euiccCertificate": euicc}))
    # implicitly tagged [5] / [6] on the wire ...
    assert der[der.index(eum[4:]) - 4] == 0xA5
    # ... and plain DER (tag 30) for the caller
    assert codec.decode("GetCertsResponse", der) == ("certs", {"eumCertificate": eum, "euiccCertificate": euicc})


def test_certificate_must_be_der_bytes() -> None:
    with pytest.raises(LocalProtocolError, match="3 top-level parts"):
        codec.encode("Certificate", bytes.fromhex("30020500"))
    with pytest.raises(LocalProtocolError, match="DER bytes"):
        codec.encode("Certificate", {"tbsCertificate": b""})


def test_ber_input_is_accepted() -> None:
    indefinite = bytes.fromhex("BF2E80" "8010" + "00" * 16 + "0000")
    assert codec.decode("GetEuiccChallengeResponse", indefinite) == {"euiccChallenge": bytes(16)}
    long_length = bytes.fromhex("BF2E8112" "8010" + "00" * 16)
    assert codec.decode("GetEuiccChallengeResponse", long_length) == {"euiccChallenge": bytes(16)}


def test_fields_of_a_later_version_are_skipped() -> None:
    # GetEuiccChallengeResponse with an unknown [5] extension after euiccChallenge
    data = bytes.fromhex("BF2E15" "8010" + "11" * 16 + "850100")
    assert codec.decode("GetEuiccChallengeResponse", data) == {"euiccChallenge": b"\x11" * 16}


def test_trailing_bytes_are_refused_with_their_offset() -> None:
    data = bytes.fromhex("BF2E12" "8010" + "00" * 16 + "9000")
    with pytest.raises(DecodeError) as info:
        codec.decode("GetEuiccChallengeResponse", data)
    assert info.value.type_name == "GetEuiccChallengeResponse"
    assert info.value.offset == 21
    assert "trailing" in str(info.value)


@pytest.mark.parametrize(("data", "needle"), [
    (b"", "no data"),
    (bytes.fromhex("BF"), "GetEuiccChallengeResponse"),
    (bytes.fromhex("BF2E03800101"), "16"),                 # euiccChallenge of 1 byte
    (bytes.fromhex("BF4F03020101"), "bf4f"),              # another message's tag
    (bytes.fromhex("BF2E2080"), "GetEuiccChallengeResponse"),   # length beyond the data
])
def test_bad_input_is_a_decode_error_naming_the_type(data: bytes, needle: str) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode("GetEuiccChallengeResponse", data)
    assert info.value.type_name == "GetEuiccChallengeResponse"
    assert needle.lower() in str(info.value).lower()


def test_decode_error_carries_the_offset_reported_by_the_decoder() -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode("GetEimPackageRequest", bytes.fromhex("BF4F03800100"))  # eidValue missing
    assert info.value.offset is not None


def test_unknown_type_names() -> None:
    with pytest.raises(DecodeError):
        codec.decode("NoSuchType", b"\x30\x00")
    with pytest.raises(LocalProtocolError):
        codec.encode("NoSuchType", {})
    with pytest.raises(LocalProtocolError):
        codec.schema("SGP32Definitions.NoSuchType")


@pytest.mark.parametrize("value", [
    {},                                                      # mandatory member missing
    {"eidValue": b"\x01"},                                   # SIZE(16) violated
    {"eidValue": "89049032"},                                # wrong Python type
    {"eidValue": EID, "stateChangeCause": "local"},          # named number given as text
])
def test_values_that_do_not_fit_are_local_protocol_errors(value: object) -> None:
    with pytest.raises(LocalProtocolError):
        codec.encode("GetEimPackageRequest", value)


def test_default_members_are_left_out_in_der_and_filled_in_on_decode() -> None:
    value = {"iccid": ICCID, "serviceProviderName": "Op", "profileName": "P", "profileClass": 2}
    der = codec.encode("StoreMetadataRequest", value)
    assert b"\x95\x01\x02" not in der
    assert codec.decode("StoreMetadataRequest", der)["profileClass"] == 2


def test_schema_exposes_members_and_kinds() -> None:
    t = codec.schema("EimConfigurationData")
    members = {name: m for name, m, _ in t.members()}
    assert members["eimPublicKeyData"].kind == "CHOICE"
    assert members["eimSupportedProtocol"].named_bits[0] == ("eimRetrieveHttps", 0)
    assert codec.schema("EimAcknowledgements").element().kind == "INTEGER"
    assert codec.schema("Certificate").kind == "Certificate"


def test_importing_the_codec_does_not_compile_or_import_asn1tools() -> None:
    code = ("import sys, gateway.spec.codec, gateway.spec.es10b, gateway.spec.esipa, "
            "gateway.spec.signed, gateway.spec.messages, gateway.spec.esipa_json;"
            "print('asn1tools' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_decoded_byte_strings_are_bytes() -> None:
    value = codec.decode("GetCertsResponse", codec.encode("GetCertsResponse", (
        "certs", {"eumCertificate": CERTIFICATES[0], "euiccCertificate": CERTIFICATES[1]})))
    assert type(value[1]["eumCertificate"]) is bytes
    info = codec.decode("IpaCapabilities", codec.encode("IpaCapabilities", {"ipaFeatures": (b"\x80", 1)}))
    assert type(info["ipaFeatures"][0]) is bytes
    request = codec.decode("GetEimPackageRequest", codec.encode("GetEimPackageRequest", {"eidValue": EID}))
    assert type(request["eidValue"]) is bytes
