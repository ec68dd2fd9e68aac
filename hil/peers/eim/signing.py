"""The eIM's signatures (SGP.32 v1.2 §2.11): what it signs, what it verifies, in one place.

- eimSignature (§2.11.1.1), by the eIM over `eim_signature_input`: the DER of
  euiccPackageSigned exactly as it stands in the EuiccPackageRequest, followed by the
  association token as a TLV with tag '84' (the DER INTEGER content octets) when the eIM
  and that eUICC share one; plain r||s ECDSA-SHA256 (SGP.22 §2.6.5).
- euiccSignEPR / euiccSignEPE (§2.11.2.1), by the eUICC over
  `euicc_package_result_signature_input`: euiccPackageResultDataSigned (or
  euiccPackageErrorDataSigned) as received, followed by the same '84' token TLV when one is
  configured. (SGP.32 v1.0 appended the request's eimSignature instead; v1.2 is implemented.)

Both inputs are the ones in hil/euicc/signed_data.py, which the software eUICC uses too, so
the two sides cannot drift apart; the peer tests check them against an independent DER encoder.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import LocalProtocolError
from gateway.spec import codec, tlv
from hil import rspcrypto
from hil.euicc.signed_data import euicc_package_result_signature_input, eim_signature_input

__all__ = ["eim_signature_input", "euicc_package_result_signature_input", "sign_euicc_package"]


def sign_euicc_package(key: ec.EllipticCurvePrivateKey, signed_value: dict[str, Any],
                       association_token: int | None) -> bytes:
    """EuiccPackageRequest DER (BF51) with eimSignature over the euiccPackageSigned it carries."""
    signed_der = codec.encode("EuiccPackageSigned", signed_value)
    signature = rspcrypto.sign_rs(key, eim_signature_input(signed_der, association_token))
    request = codec.encode("EuiccPackageRequest", {"euiccPackageSigned": signed_value,
                                                   "eimSignature": signature})
    outer = tlv.read_single(request)
    first = tlv.children(request, outer)[0]
    if first.raw_of(request) != signed_der:
        raise LocalProtocolError("EuiccPackageRequest does not carry the signed bytes unchanged")
    return request
