"""A complete RSP test PKI, generated with `cryptography` (NIST P-256), for tests and rigs.

Theory of operation. `generate_pki(directory)` creates every key and certificate a software
eUICC, an SM-DP+, an eIM and the gateway's TLS clients need, writes them as PEM with a
README.md, and returns an `RspPki` holding the paths and the loaded objects. Run again on
the same directory it loads what is there instead (``force=True`` regenerates).

    CI (self-signed, id-rspRole-ci)                       ci.*
     +- EUM (CA, pathlen 0, id-rspRole-eum,               eum.*
     |   |    nameConstraints: O=<EUM org>, serialNumber=89049032)
     |   +- eUICC per EID (id-rspRole-euicc)              euicc.*  / RspPki.issue_euicc(eid)
     +- SM-DP+ CERT.DPauth.ECDSA (id-rspRole-dp-auth)     dpauth.*
     +- SM-DP+ CERT.DPpb.ECDSA   (id-rspRole-dp-pb)       dppb.*
     +- SM-DP+ CERT.DP.TLS       (id-rspRole-dp-tls)      dptls.*   localhost / 127.0.0.1
     +- eIM signing certificate                           eim-sign.*
    TLS CA (self-signed, plain WebPKI-style)              tls-ca.*
     +- eIM TLS server certificate                        eim-tls.*  localhost / 127.0.0.1
    client CA (self-signed)                               client-ca.*
     +- gateway TLS client certificate                    gateway-client.*

SGP.22 requires the SM-DP+ TLS certificate to chain to the CI, so ES9+ clients trust
`ci.cert.pem`; the eIM's TLS certificate comes from an unrelated CA, as in deployments where
the eIM uses a public CA (SGP.32 lets the eUICC carry the eIM's TLS trust instead).
`tls-trust.pem` bundles both roots for a client that talks to both.

The EID constraint uses the SGP.22 v2 form (X.509 nameConstraints with the EIN prefix in
serialNumber), checked by `hil.rspcrypto.eid_permitted_by_eum`; brainpoolP256r1 variants are
not generated (TLS stacks here would not use them, and the RSP code is curve-agnostic).

    python -m hil.pki DIR [--force] [--eid EID ...]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hil import rspcrypto

ORG = "ipae-gateway Test"
EUM_ORG = "ipae-gateway Test EUM"
EUM_EID_PREFIX = "89049032"
DEFAULT_EID = rspcrypto.eid_with_check_digits(EUM_EID_PREFIX + "0000000000000000000001")
OID_CI = x509.ObjectIdentifier("2.999.1")       # test registeredIDs, as in GSMA test PKIs
OID_SMDP = x509.ObjectIdentifier("2.999.10")
OID_EIM = x509.ObjectIdentifier("2.999.20")
TLS_NAMES = ("localhost", "127.0.0.1", "::1")
EUICC_NOT_AFTER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)   # SGP.22: no expiry

CredentialKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Credential:
    """A key pair with its certificate and where both are on disk."""

    name: str
    key: CredentialKey
    cert: x509.Certificate
    key_path: Path
    cert_path: Path

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()

    @property
    def ski(self) -> bytes:
        return rspcrypto.subject_key_identifier(self.cert)


# name -> what README.md says about it, in generation order.
CREDENTIALS: dict[str, str] = {
    "ci": "CERT.CI.ECDSA: self-signed GSMA CI stand-in (id-rspRole-ci); its SKI is euiccCiPKId",
    "eum": f"CERT.EUM.ECDSA: EUM CA under the CI, nameConstraints O={EUM_ORG}, serialNumber={EUM_EID_PREFIX}",
    "euicc": f"CERT.EUICC.ECDSA of the default eUICC, EID {DEFAULT_EID}, issued by the EUM",
    "dpauth": "CERT.DPauth.ECDSA: SM-DP+ authentication (id-rspRole-dp-auth), under the CI",
    "dppb": "CERT.DPpb.ECDSA: SM-DP+ profile binding (id-rspRole-dp-pb), under the CI",
    "dptls": "CERT.DP.TLS: SM-DP+ TLS server (id-rspRole-dp-tls), SAN localhost/127.0.0.1/::1, under the CI",
    "eim-sign": "eIM signing certificate (eimPublicKeyData / eimSignature), under the CI",
    "tls-ca": "a plain TLS root, issuer of the eIM TLS certificate",
    "eim-tls": "eIM TLS server, SAN localhost/127.0.0.1/::1, under tls-ca",
    "client-ca": "a TLS client CA (for servers that require client certificates)",
    "gateway-client": "the gateway's TLS client certificate, under client-ca",
}
TRUST_BUNDLE = "tls-trust.pem"


def _name(*attrs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])


def _policies(roles: Iterable[x509.ObjectIdentifier]) -> x509.CertificatePolicies:
    return x509.CertificatePolicies([x509.PolicyInformation(r, None) for r in roles])


def _key_usage(*, sign: bool = False, ca: bool = False, key_agreement: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=key_agreement, key_cert_sign=ca,
                         crl_sign=ca, encipher_only=False, decipher_only=False)


def _tls_san(extra: Sequence[x509.GeneralName] = ()) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for n in TLS_NAMES:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            names.append(x509.DNSName(n))
    return x509.SubjectAlternativeName([*names, *extra])


def issue_certificate(
    subject: x509.Name,
    issuer: tuple[CredentialKey, x509.Certificate] | None,
    *,
    key: CredentialKey | None = None,
    ca: bool = False,
    path_length: int | None = None,
    key_usage: x509.KeyUsage,
    roles: Sequence[x509.ObjectIdentifier] = (),
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    days: int = 3650,
) -> tuple[CredentialKey, x509.Certificate]:
    """Issue one certificate; `issuer=None` makes it self-signed. Returns (key, cert).

    Every certificate gets SKI (SHA-1 of the key, RFC 5280 method 1) and, when issued, the
    issuer's SKI as AKI. Tests use `not_before`/`not_after` to make expired or future ones.
    """
    key = key or rspcrypto.generate_key()
    start = not_before or datetime.now(timezone.utc) - timedelta(hours=1)
    end = not_after or start + timedelta(days=days)
    signer_key, issuer_name = (key, subject) if issuer is None else (issuer[0], issuer[1].subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(key_usage, critical=True)
    )
    if issuer is not None:
        issuer_ski = issuer[1].extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
    if roles:
        builder = builder.add_extension(_policies(roles), critical=False)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    return key, builder.sign(signer_key, hashes.SHA256())


def issue_euicc_certificate(eum: tuple[CredentialKey, x509.Certificate], eid: bytes | str, *,
                            not_before: datetime | None = None,
                            not_after: datetime | None = None) -> tuple[CredentialKey, x509.Certificate]:
    """CERT.EUICC.ECDSA for `eid` (32 digits or 16 bytes): subject O=<EUM org>, serialNumber=EID."""
    eid_text = rspcrypto.eid_string(eid)
    subject = _name((NameOID.ORGANIZATION_NAME, EUM_ORG), (NameOID.SERIAL_NUMBER, eid_text),
                    (NameOID.COMMON_NAME, "ipae-gateway Test eUICC"))
    return issue_certificate(subject, eum, key_usage=_key_usage(sign=True),
                             roles=[rspcrypto.OID_RSP_ROLE_EUICC],
                             not_before=not_before, not_after=not_after or EUICC_NOT_AFTER)


def _build_all(default_eid: str) -> dict[str, tuple[CredentialKey, x509.Certificate]]:
    out: dict[str, tuple[CredentialKey, x509.Certificate]] = {}
    out["ci"] = issue_certificate(
        _name((NameOID.ORGANIZATION_NAME, ORG), (NameOID.COMMON_NAME, "ipae-gateway Test CI")), None,
        ca=True, key_usage=_key_usage(ca=True), roles=[rspcrypto.OID_RSP_ROLE_CI], days=365 * 35,
        extra=[(x509.SubjectAlternativeName([x509.RegisteredID(OID_CI)]), False)])
    ci = out["ci"]
    eum_subtree = _name((NameOID.ORGANIZATION_NAME, EUM_ORG), (NameOID.SERIAL_NUMBER, EUM_EID_PREFIX))
    out["eum"] = issue_certificate(
        _name((NameOID.ORGANIZATION_NAME, EUM_ORG), (NameOID.COMMON_NAME, "ipae-gateway Test EUM")), ci,
        ca=True, path_length=0, key_usage=_key_usage(ca=True), roles=[rspcrypto.OID_RSP_ROLE_EUM],
        days=365 * 30,
        extra=[(x509.NameConstraints(permitted_subtrees=[x509.DirectoryName(eum_subtree)],
                                     excluded_subtrees=None), True)])
    out["euicc"] = issue_euicc_certificate(out["eum"], default_eid)
    smdp = _name((NameOID.ORGANIZATION_NAME, ORG), (NameOID.COMMON_NAME, "ipae-gateway Test SM-DP+"))
    smdp_rid = x509.SubjectAlternativeName([x509.RegisteredID(OID_SMDP)])
    for name, role in (("dpauth", rspcrypto.OID_RSP_ROLE_DP_AUTH), ("dppb", rspcrypto.OID_RSP_ROLE_DP_PB)):
        out[name] = issue_certificate(smdp, ci, key_usage=_key_usage(sign=True), roles=[role],
                                      days=1095, extra=[(smdp_rid, False)])
    server_client = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    out["dptls"] = issue_certificate(
        _name((NameOID.ORGANIZATION_NAME, ORG), (NameOID.COMMON_NAME, "localhost")), ci,
        key_usage=_key_usage(sign=True), roles=[rspcrypto.OID_RSP_ROLE_DP_TLS], days=398,
        extra=[(server_client, False), (_tls_san([x509.RegisteredID(OID_SMDP)]), False)])
    out["eim-sign"] = issue_certificate(
        _name((NameOID.ORGANIZATION_NAME, ORG), (NameOID.COMMON_NAME, "ipae-gateway Test eIM")), ci,
        key_usage=_key_usage(sign=True), days=1095,
        extra=[(x509.SubjectAlternativeName([x509.RegisteredID(OID_EIM)]), False)])
    out["tls-ca"] = issue_certificate(
        _name((NameOID.ORGANIZATION_NAME, ORG), (NameOID.COMMON_NAME, "ipae-gateway Test TLS CA")), None,
        ca=True, key_usage=_key_usage(ca=True), days=3650)
    out["eim-tls"] = issue_certificate(
        _name((NameOID.ORGANIZATION_NAME, ORG), (NameOID.COMMON_NAME, "localhost")), out["tls-ca"],
        key_usage=_key_usage(sign=True), days=398,
        extra=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False), (_tls_san(), False)])
    out["client-ca"] = issue_certificate(
        _name((NameOID.ORGANIZATION_NAME, ORG), (NameOID.COMMON_NAME, "ipae-gateway Test client CA")), None,
        ca=True, key_usage=_key_usage(ca=True), days=3650)
    out["gateway-client"] = issue_certificate(
        _name((NameOID.ORGANIZATION_NAME, ORG), (NameOID.COMMON_NAME, "ipae-gateway")), out["client-ca"],
        key_usage=_key_usage(sign=True), days=398,
        extra=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)])
    return out


def _key_pem(key: CredentialKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _paths(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / f"{name}.key.pem", directory / f"{name}.cert.pem"


def _load_credential(directory: Path, name: str) -> Credential:
    key_path, cert_path = _paths(directory, name)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not an EC private key")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return Credential(name, key, cert, key_path, cert_path)


@dataclass
class RspPki:
    """The generated PKI: one `Credential` per role, plus eUICC certificates on demand.

    Attributes are the names of CREDENTIALS with '-' as '_' (ci, eum, euicc, dpauth, dppb,
    dptls, eim_sign, tls_ca, eim_tls, client_ca, gateway_client). Useful shortcuts:
    `ci_pkid` (euiccCiPKId), `eid` (the default eUICC's EID), `tls_trust_path` (CI + TLS CA
    bundle for TLS clients), `issue_euicc(eid)`.
    """

    directory: Path
    ci: Credential
    eum: Credential
    euicc: Credential
    dpauth: Credential
    dppb: Credential
    dptls: Credential
    eim_sign: Credential
    tls_ca: Credential
    eim_tls: Credential
    client_ca: Credential
    gateway_client: Credential
    _euiccs: dict[str, tuple[CredentialKey, x509.Certificate]] = field(
        default_factory=dict, init=False, repr=False)

    @property
    def ci_pkid(self) -> bytes:
        """SKI of the CI: euiccCiPKId / euiccCiPKIdToBeUsed."""
        return self.ci.ski

    @property
    def eid(self) -> str:
        return rspcrypto.euicc_eid(self.euicc.cert)

    @property
    def eid_bytes(self) -> bytes:
        return bytes.fromhex(self.eid)

    @property
    def eum_eid_prefix(self) -> str:
        return EUM_EID_PREFIX

    @property
    def tls_trust_path(self) -> Path:
        return self.directory / TRUST_BUNDLE

    def issue_euicc(self, eid: bytes | str) -> tuple[CredentialKey, x509.Certificate]:
        """(SK.EUICC.ECDSA, CERT.EUICC.ECDSA) for `eid`, issued by the EUM key.

        The same EID always gets the same pair within one RspPki object, so a software eUICC
        and a peer built from the same fixture agree. The default EID returns `euicc`.
        EIDs outside 89049032 are issued too (the EUM key signs anything): chain
        verification is what rejects them.
        """
        text = rspcrypto.eid_string(eid)
        if text == self.eid:
            return self.euicc.key, self.euicc.cert
        if text not in self._euiccs:
            self._euiccs[text] = issue_euicc_certificate((self.eum.key, self.eum.cert), text)
        return self._euiccs[text]

    def write_euicc(self, eid: bytes | str) -> Credential:
        """issue_euicc, also written as euicc-<EID>.{key,cert}.pem in the PKI directory."""
        key, cert = self.issue_euicc(eid)
        name = f"euicc-{rspcrypto.eid_string(eid)}"
        key_path, cert_path = _paths(self.directory, name)
        _write(key_path, _key_pem(key), private=True)
        _write(cert_path, _cert_pem(cert))
        return Credential(name, key, cert, key_path, cert_path)

    @classmethod
    def load(cls, directory: Path) -> RspPki:
        creds = {name.replace("-", "_"): _load_credential(directory, name) for name in CREDENTIALS}
        return cls(directory=directory, **creds)


def _readme(eid: str) -> str:
    rows = "\n".join(f"| `{n}.key.pem` / `{n}.cert.pem` | {d} |" for n, d in CREDENTIALS.items())
    return f"""# ipae-gateway test PKI

Generated by `python -m hil.pki` with `cryptography` (NIST P-256, ECDSA-SHA256). For tests
and lab rigs only: the private keys are in the clear. Keys are PKCS#8 PEM, certificates PEM.

| files | what |
|---|---|
{rows}
| `euicc-<EID>.*.pem` | further eUICC certificates (`--eid`), issued by the EUM |
| `{TRUST_BUNDLE}` | CI + TLS CA roots: what a TLS client of the SM-DP+ and the eIM trusts |

Default eUICC EID: {eid}. euiccCiPKId = subjectKeyIdentifier of `ci.cert.pem`.
The EUM's nameConstraints permit directoryName O={EUM_ORG}, serialNumber={EUM_EID_PREFIX}:
per SGP.22 an eUICC certificate is covered when its EID *starts with* that serialNumber.
RSP role OIDs (2.23.146.1.2.1.x) are in each certificate's certificatePolicies.
"""


def generate_pki(directory: Path | str, *, force: bool = False, default_eid: str = DEFAULT_EID) -> RspPki:
    """Write a fresh PKI into `directory` (created if needed) or load the one already there.

    An existing PKI (marked by ci.cert.pem, written last) is loaded unless `force`; one with
    files missing raises FileNotFoundError.
    """
    directory = Path(directory)
    if (directory / "ci.cert.pem").exists() and not force:
        return RspPki.load(directory)
    directory.mkdir(parents=True, exist_ok=True)
    built = _build_all(rspcrypto.eid_string(default_eid))
    for name, (key, cert) in built.items():
        key_path, cert_path = _paths(directory, name)
        _write(key_path, _key_pem(key), private=True)
        _write(cert_path, _cert_pem(cert))
    _write(directory / TRUST_BUNDLE, _cert_pem(built["ci"][1]) + _cert_pem(built["tls-ca"][1]))
    # ci.cert.pem last, as the "PKI complete" marker that makes a rerun load instead.
    ci_cert = directory / "ci.cert.pem"
    ci_cert.unlink()
    _write(directory / "README.md", _readme(default_eid).encode())
    _write(ci_cert, _cert_pem(built["ci"][1]))
    return RspPki.load(directory)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.pki", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--force", action="store_true", help="replace an existing PKI in DIR")
    parser.add_argument("--eid", action="append", default=[],
                        help="also issue an eUICC certificate for this 32-digit EID (repeatable)")
    args = parser.parse_args(argv)
    existed = (args.directory / "ci.cert.pem").exists()
    try:
        pki = generate_pki(args.directory, force=args.force)
        extra = [pki.write_euicc(eid) for eid in args.eid]
    except (ValueError, OSError) as exc:
        print(f"hil.pki: {exc}", file=sys.stderr)
        return 2
    state = "kept existing" if existed and not args.force else "wrote"
    print(f"{state} test PKI in {args.directory} (CI SKI {pki.ci_pkid.hex()}, EID {pki.eid})")
    for cred in extra:
        print(f"wrote {cred.cert_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
