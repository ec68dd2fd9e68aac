"""Who the software eUICC is: its EID, signing key, certificates and trusted CIs.

The eUICC certificate for an EID is taken from the test PKI (`hil.pki.RspPki.issue_euicc`),
which issues one from the EUM key on first use; the CI certificate is the only trust anchor
(`euiccCiPKIdListForVerification` and `...ForSigning` both hold its subject key identifier).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hil import rspcrypto
from hil.pki import RspPki, generate_pki


@dataclass(frozen=True)
class EuiccIdentity:
    eid: bytes
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    eum_certificate: x509.Certificate
    ci_certificates: tuple[x509.Certificate, ...]

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def eum_certificate_der(self) -> bytes:
        return self.eum_certificate.public_bytes(serialization.Encoding.DER)

    @property
    def ci_pkids(self) -> list[bytes]:
        return [rspcrypto.subject_key_identifier(c) for c in self.ci_certificates]

    def ci_for(self, pkid: bytes) -> x509.Certificate | None:
        return next((c for c in self.ci_certificates if rspcrypto.subject_key_identifier(c) == pkid), None)

    def sign(self, data: bytes) -> bytes:
        """ECDSA-SHA256 with SK.EUICC.ECDSA, plain r||s."""
        return rspcrypto.sign_rs(self.key, data)


def load_pki(pki: RspPki | Path | str) -> RspPki:
    return pki if isinstance(pki, RspPki) else generate_pki(Path(pki))


def identity_from_pki(pki: RspPki, eid: bytes) -> EuiccIdentity:
    key, cert = pki.issue_euicc(eid)
    return EuiccIdentity(eid=bytes(eid), key=key, certificate=cert,
                         eum_certificate=pki.eum.cert, ci_certificates=(pki.ci.cert,))
