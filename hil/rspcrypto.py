"""RSP cryptography for the software eUICC and the SM-DP+/eIM peers (Contract 5).

Theory of operation. Everything here is a thin, spec-shaped layer over `cryptography`:

- **Signatures** (SGP.22 §2.6.5): ECDSA with SHA-256 over the *exact bytes* given (for
  example DER(euiccSigned1)), carried as plain r||s (BSI TR-03111 §5.2.1: r and s each
  left-padded to the field size, 64 bytes for P-256), never as DER. `rs_to_der`/`der_to_rs`
  convert, so any X.509/DER-speaking implementation can verify what we sign.
- **Certificates** (SGP.22 §4.5.2): chains are checked by hand because RSP chains are not
  WebPKI chains (`cryptography.x509.verification` applies TLS server rules): signature by
  the issuer's key, issuer name and key identifiers, validity, CA flags, key usage, the RSP
  role in certificatePolicies, and for eUICC certificates that the EID lies under the EUM's
  name constraint (the SGP.22 v2 "Variant O" rule: permitted directoryName subtrees whose
  serialNumber is an EID *prefix*, see `eid_permitted_by_eum`). Parse certificates received
  from a peer with `load_certificate_der`, which refuses malformed ones up front.
- **Key agreement** (SGP.22 §2.6.4 / §3.1.3): ECKA-DH (TR-03111 §4.3.1) gives the shared
  secret ShS (the x-coordinate); the X9.63 KDF with SHA-256 turns ShS and the shared info
  of InitialiseSecureChannel into (initial MAC chaining value, S-ENC, S-MAC).
- **SCP03t / BSP** (SGP.22 §2.5.4 and §2.6.4, GlobalPlatform Amendment F profile): an
  `Scp03tSession` holds the keys, the MAC chaining value and the block counter of one
  direction of one Bound Profile Package. `protect_segment` (SM-DP+) and
  `unprotect_segment` (eUICC) each advance that state by exactly one segment, and only when
  the segment succeeds, so both sides stay in step; a reordered, dropped or altered segment
  breaks the MAC chain and raises `SecureChannelError`.

Where a detail is recalled from the specification rather than read from it, the comment
says so; both peers of this project use this one module, so they agree by construction,
while signatures stay checkable by any independent ECDSA implementation. Recalled rather
than read in SGP.22: the SharedInfo layout (`kdf_shared_info`), that the block counter also
advances on C-MAC-only ('88') segments, and that a session built from ReplaceSessionKeys
(PPK-ENC/PPK-CMAC) starts its block counter at 1 again. All three agree with published
known answers recorded from a third-party SM-DP+ (tests/hil/test_rspcrypto.py).
"""

from __future__ import annotations

import hmac
import string
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from gateway.errors import DecodeError, RemoteProtocolError
from gateway.spec import tlv

# --- object identifiers (SGP.22 Annex H / §4.5.2.1) -----------------------------------------
# id-rsp ::= {joint-iso-itu-t(2) international-organizations(23) gsma(146) rsp(1)}
# id-rsp-cert-objects ::= {id-rsp 2}; id-rspRole ::= {id-rsp-cert-objects 1}
OID_RSP_ROLE_CI = x509.ObjectIdentifier("2.23.146.1.2.1.0")
OID_RSP_ROLE_EUICC = x509.ObjectIdentifier("2.23.146.1.2.1.1")
OID_RSP_ROLE_EUM = x509.ObjectIdentifier("2.23.146.1.2.1.2")
OID_RSP_ROLE_DP_TLS = x509.ObjectIdentifier("2.23.146.1.2.1.3")
OID_RSP_ROLE_DP_AUTH = x509.ObjectIdentifier("2.23.146.1.2.1.4")
OID_RSP_ROLE_DP_PB = x509.ObjectIdentifier("2.23.146.1.2.1.5")
OID_RSP_ROLE_DS_TLS = x509.ObjectIdentifier("2.23.146.1.2.1.6")
OID_RSP_ROLE_DS_AUTH = x509.ObjectIdentifier("2.23.146.1.2.1.7")

P256 = ec.SECP256R1()
SIGNATURE_HASH = hashes.SHA256()

# --- errors ----------------------------------------------------------------------------------


class RspCryptoError(RemoteProtocolError):
    """A peer's signature, certificate or protected segment did not verify."""


class SignatureInvalid(RspCryptoError):
    """An ECDSA signature (r||s) does not verify, or is not 2 x field size bytes."""


class CertificateInvalid(RspCryptoError):
    """A certificate chain does not verify; the message names the certificate and the check."""


class SecureChannelError(RspCryptoError):
    """An SCP03t segment failed: wrong MAC (tamper, reorder, wrong keys), bad padding or TLV."""


# --- ECDSA in plain r||s (SGP.22 §2.6.5, BSI TR-03111 §5.2.1) --------------------------------


def _field_bytes(curve: ec.EllipticCurve) -> int:
    return (curve.key_size + 7) // 8


def der_to_rs(der_signature: bytes, curve: ec.EllipticCurve = P256) -> bytes:
    """DER ECDSA-Sig-Value -> r||s with each integer left-padded to the field size."""
    size = _field_bytes(curve)
    try:
        r, s = decode_dss_signature(der_signature)
    except ValueError as exc:
        raise SignatureInvalid(f"not a DER ECDSA signature: {exc}") from exc
    if r >= 1 << (8 * size) or s >= 1 << (8 * size):
        raise SignatureInvalid("DER signature integers larger than the curve field")
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def rs_to_der(rs_signature: bytes, curve: ec.EllipticCurve = P256) -> bytes:
    """r||s -> DER ECDSA-Sig-Value (what X.509 and `cryptography` verify)."""
    size = _field_bytes(curve)
    if len(rs_signature) != 2 * size:
        raise SignatureInvalid(f"r||s signature is {len(rs_signature)} bytes, expected {2 * size}")
    r = int.from_bytes(rs_signature[:size], "big")
    s = int.from_bytes(rs_signature[size:], "big")
    return encode_dss_signature(r, s)


def sign_rs(private_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-SHA256 over exactly `data`, returned as r||s."""
    der = private_key.sign(data, ec.ECDSA(SIGNATURE_HASH))
    return der_to_rs(der, private_key.curve)


def verify_rs(public_key: ec.EllipticCurvePublicKey, data: bytes, rs_signature: bytes) -> None:
    """Raise SignatureInvalid unless `rs_signature` is ECDSA-SHA256 over `data` by `public_key`."""
    der = rs_to_der(rs_signature, public_key.curve)
    try:
        public_key.verify(der, data, ec.ECDSA(SIGNATURE_HASH))
    except InvalidSignature as exc:
        raise SignatureInvalid("ECDSA signature does not verify") from exc


def verify_rs_with_certificate(cert: x509.Certificate, data: bytes, rs_signature: bytes) -> None:
    """verify_rs with the EC public key of `cert` (e.g. serverSignature1 with CERT.DPauth)."""
    verify_rs(ec_public_key(cert), data, rs_signature)


def ec_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CertificateInvalid(f"{_who(cert)}: public key is not an EC key")
    return key


def smdp_oid(cert: x509.Certificate) -> str | None:
    """The SM-DP+ OID: the registeredID in CERT.DPauth's subjectAltName (SGP.22 §4.5.2.1)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    ids = san.get_values_for_type(x509.RegisteredID)
    return ids[0].dotted_string if ids else None


# --- EC points and ECKA (SGP.22 §3.1.3 otPK/otSK, TR-03111 §4.3.1) ---------------------------


def generate_key(curve: ec.EllipticCurve = P256) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve)


def public_key_bytes(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """Uncompressed point 04||X||Y, as otPK.DP.ECKA / otPK.EUICC.ECKA are carried."""
    return public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def public_key_from_bytes(point: bytes, curve: ec.EllipticCurve = P256) -> ec.EllipticCurvePublicKey:
    """Inverse of public_key_bytes; a point not on the curve is a RspCryptoError."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError as exc:
        raise RspCryptoError(f"invalid EC public key point: {exc}") from exc


def ecka_shared_secret(private_key: ec.EllipticCurvePrivateKey,
                       peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
    """ShS = x-coordinate of d * Q (ECKA-DH, BSI TR-03111 §4.3.1), 32 bytes for P-256."""
    return private_key.exchange(ec.ECDH(), peer_public_key)


# --- session key derivation (SGP.22 §2.6.4) --------------------------------------------------

KEY_TYPE_AES = 0x88
KEY_LENGTH_AES128 = 0x10


@dataclass(frozen=True, slots=True)
class SessionKeys:
    initial_mac_chaining_value: bytes
    s_enc: bytes
    s_mac: bytes


def _lv(value: bytes) -> bytes:
    # The length octets of an "LV" in SGP.22 are BER length octets (one octet for < 128).
    return tlv.encode_length(len(value)) + value


def kdf_shared_info(*, key_type: int, key_length: int, host_id: bytes, eid: bytes) -> bytes:
    """SharedInfo of the X9.63 KDF for InitialiseSecureChannel (SGP.22 §2.6.4, key derivation).

    SharedInfo = keyType (1 octet, '88' = AES) || keyLength (1 octet, '10' = 16)
                 || hostId as LV || EID as LV,
    with keyType, keyLength and hostId the values the SM-DP+ put in the controlRefTemplate
    (tags 80, 81, 84) of InitialiseSecureChannel and the EID the 16-byte EID (v3.0 numbers
    the clause 2.6.4.2). Recalled, then confirmed by known answers from a third-party SM-DP+.
    Unlike GlobalPlatform Amendment E, no key-usage octet precedes keyType.
    """
    if not 0 <= key_type <= 0xFF or not 0 <= key_length <= 0xFF:
        raise ValueError("keyType and keyLength are single octets")
    return bytes([key_type, key_length]) + _lv(host_id) + _lv(eid)


def derive_session_keys(shared_secret: bytes, *, host_id: bytes, eid: bytes,
                        key_type: int = KEY_TYPE_AES,
                        key_length: int = KEY_LENGTH_AES128) -> SessionKeys:
    """X9.63 KDF (SHA-256): KeyData = H(ShS || counter32 || SharedInfo) || ... (counter from 1).

    The first `key_length` octets are the initial MAC chaining value, then S-ENC, then S-MAC
    (SGP.22 §2.6.4).
    """
    if key_type != KEY_TYPE_AES or key_length != KEY_LENGTH_AES128:
        raise RspCryptoError(f"unsupported session key type {key_type:02X}/length {key_length}")
    info = kdf_shared_info(key_type=key_type, key_length=key_length, host_id=host_id, eid=eid)
    out = X963KDF(algorithm=hashes.SHA256(), length=3 * key_length, sharedinfo=info).derive(shared_secret)
    n = key_length
    return SessionKeys(initial_mac_chaining_value=out[:n], s_enc=out[n:2 * n], s_mac=out[2 * n:])


# --- SCP03t segment protection (SGP.22 §2.5.4 / §2.6.4, GP Amendment F) ----------------------

MAC_LENGTH = 8
BLOCK = 16
# SGP.22 (v3.0 §2.5.3): a protected segment is at most 1020 bytes including tag, length and MAC.
MAX_SEGMENT_SIZE = 1020
TAG_CONFIGURE_ISDP = 0x87    # firstSequenceOf87 / secondSequenceOf87 (ReplaceSessionKeys)
TAG_STORE_METADATA = 0x88    # sequenceOf88: C-MAC only, not encrypted
TAG_PROFILE_ELEMENT = 0x86   # sequenceOf86
ENCRYPTED_TAGS = frozenset({TAG_CONFIGURE_ISDP, TAG_PROFILE_ELEMENT})


def max_plaintext(encrypted: bool) -> int:
    """Largest plaintext that fits one MAX_SEGMENT_SIZE segment (tag 1, length 3, MAC 8)."""
    room = MAX_SEGMENT_SIZE - 1 - 3 - MAC_LENGTH
    if not encrypted:
        return room
    return room // BLOCK * BLOCK - 1   # at least one padding octet ('80') always follows


@dataclass(slots=True)
class Scp03tSession:
    """One direction of one BPP: keys plus the two pieces of state both ends advance together.

    Create it from `derive_session_keys` after InitialiseSecureChannel, or with the PPK-ENC,
    PPK-CMAC and initial MAC chaining value of ReplaceSessionKeys for the '86' segments.
    """

    s_enc: bytes
    s_mac: bytes
    mac_chaining_value: bytes
    block_counter: int = 1
    segments: int = 0        # segments accepted so far, named in error messages

    @classmethod
    def from_keys(cls, keys: SessionKeys) -> Scp03tSession:
        return cls(s_enc=keys.s_enc, s_mac=keys.s_mac,
                   mac_chaining_value=keys.initial_mac_chaining_value)


def _aes_ecb_block(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def _icv(session: Scp03tSession) -> bytes:
    # ICV = AES(S-ENC, block counter as a 16-byte big-endian block); the counter starts at 1
    # and advances once per segment, including C-MAC-only ('88') segments (SGP.22 §2.6.4.3
    # in v3.0 numbering: "incremented also for each segment with C-MAC only").
    return _aes_ecb_block(session.s_enc, session.block_counter.to_bytes(BLOCK, "big"))


def _pad(data: bytes) -> bytes:
    # '80' then 0..15 '00' to a multiple of 16 (ISO/IEC 9797-1 method 2, SGP.22 §2.6.4.4).
    padded = data + b"\x80"
    return padded + b"\x00" * (-len(padded) % BLOCK)


def _unpad(padded: bytes) -> bytes:
    stripped = padded.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80 or len(padded) - len(stripped) >= BLOCK:
        raise SecureChannelError("segment padding is not '80 00..'")
    return stripped[:-1]


def _full_cmac(key: bytes, data: bytes) -> bytes:
    c = CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def _default_encrypted(tag: int) -> bool:
    return tag in ENCRYPTED_TAGS


def protect_segment(session: Scp03tSession, tag: int, plaintext: bytes, *,
                    encrypt: bool | None = None) -> bytes:
    """SM-DP+ side: one protected TLV `tag || L || data || C-MAC` for one BPP segment.

    data = AES-CBC(S-ENC, ICV, pad(plaintext)) when encrypting (default for '86'/'87'),
    else the plaintext ('88'). C-MAC = first 8 octets of AES-CMAC(S-MAC, MAC chaining value
    || tag || L || data) where L counts data plus MAC; the full 16-octet CMAC becomes the
    next MAC chaining value.
    """
    if not 0 < tag <= 0xFF:
        raise ValueError("SCP03t segment tags are single octets")
    encrypted = _default_encrypted(tag) if encrypt is None else encrypt
    if encrypted:
        enc = Cipher(algorithms.AES(session.s_enc), modes.CBC(_icv(session))).encryptor()
        data = enc.update(_pad(plaintext)) + enc.finalize()
    else:
        data = plaintext
    head = tlv.header(tag, len(data) + MAC_LENGTH)
    full = _full_cmac(session.s_mac, session.mac_chaining_value + head + data)
    session.mac_chaining_value = full
    session.block_counter += 1
    session.segments += 1
    return head + data + full[:MAC_LENGTH]


def protect_data(session: Scp03tSession, tag: int, plaintext: bytes, *,
                 encrypt: bool | None = None) -> list[bytes]:
    """Split `plaintext` into as few MAX_SEGMENT_SIZE segments as fit and protect each."""
    encrypted = _default_encrypted(tag) if encrypt is None else encrypt
    step = max_plaintext(encrypted)
    chunks = [plaintext[i:i + step] for i in range(0, len(plaintext), step)] or [b""]
    return [protect_segment(session, tag, c, encrypt=encrypted) for c in chunks]


def unprotect_segment(session: Scp03tSession, segment: bytes, *,
                      expected_tag: int | None = None, encrypted: bool | None = None) -> bytes:
    """eUICC side: verify the C-MAC of one received TLV, then decrypt; returns the plaintext.

    The session advances only when the segment verifies, so a rejected segment leaves it as
    it was (the eUICC aborts the BPP anyway). Raises SecureChannelError on any failure.
    """
    try:
        node = tlv.read_single(segment)
    except DecodeError as exc:
        raise SecureChannelError(f"protected segment is not one TLV: {exc}") from exc
    if node.tag > 0xFF:
        raise SecureChannelError(f"segment tag {node.tag:X} is not a single octet")
    if expected_tag is not None and node.tag != expected_tag:
        raise SecureChannelError(f"segment tag {node.tag:02X}, expected {expected_tag:02X}")
    if node.length < MAC_LENGTH:
        raise SecureChannelError("segment shorter than its C-MAC")
    data = segment[node.value_start:node.end - MAC_LENGTH]
    received_mac = segment[node.end - MAC_LENGTH:node.end]
    # The MAC covers the tag and length octets exactly as received.
    full = _full_cmac(session.s_mac, session.mac_chaining_value + segment[:node.end - MAC_LENGTH])
    if not hmac.compare_digest(full[:MAC_LENGTH], received_mac):
        raise SecureChannelError(
            f"C-MAC of segment {session.segments} (tag {node.tag:02X}) does not verify: "
            "altered, reordered or protected with other keys")
    is_encrypted = _default_encrypted(node.tag) if encrypted is None else encrypted
    if is_encrypted:
        if not data or len(data) % BLOCK:
            raise SecureChannelError(f"encrypted data of {len(data)} bytes is not whole AES blocks")
        dec = Cipher(algorithms.AES(session.s_enc), modes.CBC(_icv(session))).decryptor()
        plaintext = _unpad(dec.update(data) + dec.finalize())
    else:
        plaintext = data
    session.mac_chaining_value = full
    session.block_counter += 1
    session.segments += 1
    return plaintext


# --- certificates (SGP.22 §4.5.2) ------------------------------------------------------------


def _who(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string() or f"serial {cert.serial_number:X}"
    except ValueError:
        return "certificate with a malformed subject"


def _ext(cert: x509.Certificate, ext_type: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(ext_type).value
    except x509.ExtensionNotFound:
        return None


def load_certificate_der(data: bytes) -> x509.Certificate:
    """Parse a certificate received in an RSP message (serverCertificate, eumCertificate, ...)."""
    try:
        with warnings.catch_warnings():
            # What `cryptography` still accepts with a warning (a serial number that is not
            # positive, a countryName that is not 2 letters, ...) RFC 5280 forbids: refuse it.
            warnings.simplefilter("error")
            cert = x509.load_der_x509_certificate(data)
            # Fields are parsed lazily: touch each now so that a malformed name, extension
            # or key is refused here and not as a bare library exception later.
            _ = (cert.subject, cert.issuer, cert.extensions, cert.not_valid_before_utc,
                 cert.not_valid_after_utc, cert.public_key(), cert.signature_hash_algorithm)
    except (ValueError, TypeError, UnsupportedAlgorithm, Warning, x509.InvalidVersion,
            x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CertificateInvalid(f"not a usable DER X.509 certificate: {exc!r}") from exc
    return cert


def select_ci(trusted: Sequence[x509.Certificate], ci_pkid: bytes) -> x509.Certificate:
    """The trusted CI certificate whose SKI is `ci_pkid` (euiccCiPKIdToBeUsed, §5.6.1/§5.7.13)."""
    for ci in trusted:
        if subject_key_identifier(ci) == ci_pkid:
            return ci
    raise CertificateInvalid(f"no trusted CI with key identifier {ci_pkid.hex()}")


def subject_key_identifier(cert: x509.Certificate) -> bytes:
    """The SKI octets (for the CI: what the eUICC lists as euiccCiPKId)."""
    ski = _ext(cert, x509.SubjectKeyIdentifier)
    if not isinstance(ski, x509.SubjectKeyIdentifier):
        raise CertificateInvalid(f"{_who(cert)}: no subjectKeyIdentifier")
    return ski.digest


def authority_key_identifier(cert: x509.Certificate) -> bytes | None:
    aki = _ext(cert, x509.AuthorityKeyIdentifier)
    return aki.key_identifier if isinstance(aki, x509.AuthorityKeyIdentifier) else None


def rsp_roles(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    """The policy OIDs of certificatePolicies (where SGP.22 puts the id-rspRole-* value)."""
    pol = _ext(cert, x509.CertificatePolicies)
    if not isinstance(pol, x509.CertificatePolicies):
        return set()
    return {p.policy_identifier for p in pol}


def _now(at: datetime | None) -> datetime:
    return datetime.now(timezone.utc) if at is None else at.astimezone(timezone.utc)


def check_validity(cert: x509.Certificate, at: datetime | None = None) -> None:
    when = _now(at)
    if when < cert.not_valid_before_utc:
        raise CertificateInvalid(f"{_who(cert)}: not valid before {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}")
    if when > cert.not_valid_after_utc:
        raise CertificateInvalid(f"{_who(cert)}: expired {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")


def _check_ca(cert: x509.Certificate) -> None:
    bc = _ext(cert, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        raise CertificateInvalid(f"{_who(cert)}: issuer is not a CA (basicConstraints)")
    ku = _ext(cert, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
        raise CertificateInvalid(f"{_who(cert)}: issuer key usage lacks keyCertSign")


def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate, *,
                     at: datetime | None = None) -> None:
    """One link: `issuer` (a CA, valid at `at`) signed `cert` (valid at `at`)."""
    _check_ca(issuer)
    check_validity(issuer, at)
    check_validity(cert, at)
    aki = authority_key_identifier(cert)
    issuer_ski = _ext(issuer, x509.SubjectKeyIdentifier)
    if aki is not None and isinstance(issuer_ski, x509.SubjectKeyIdentifier) and aki != issuer_ski.digest:
        raise CertificateInvalid(f"{_who(cert)}: authorityKeyIdentifier does not match issuer {_who(issuer)}")
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature as exc:
        raise CertificateInvalid(f"{_who(cert)}: signature does not verify with {_who(issuer)}") from exc
    except (ValueError, TypeError) as exc:
        raise CertificateInvalid(f"{_who(cert)}: not issued by {_who(issuer)}: {exc}") from exc


def check_role(cert: x509.Certificate, role: x509.ObjectIdentifier) -> None:
    if role not in rsp_roles(cert):
        raise CertificateInvalid(f"{_who(cert)}: certificatePolicies lack RSP role {role.dotted_string}")


def check_digital_signature(cert: x509.Certificate) -> None:
    ku = _ext(cert, x509.KeyUsage)
    if not isinstance(ku, x509.KeyUsage) or not ku.digital_signature:
        raise CertificateInvalid(f"{_who(cert)}: key usage lacks digitalSignature")


def verify_chain(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                 root: x509.Certificate, *, at: datetime | None = None,
                 leaf_role: x509.ObjectIdentifier | None = None) -> None:
    """leaf <- intermediates[0] <- ... <- root, where `root` is the trusted (self-signed) CI.

    `intermediates` are ordered from the one that issued the leaf towards the root.
    """
    verify_issued_by(root, root, at=at)
    chain = [leaf, *intermediates, root]
    for cert, issuer in zip(chain, chain[1:]):
        verify_issued_by(cert, issuer, at=at)
    if leaf_role is not None:
        check_role(leaf, leaf_role)
        check_digital_signature(leaf)


# --- EIDs and the EUM name constraint --------------------------------------------------------


def eid_string(eid: bytes | str) -> str:
    """The 32-digit EID string (the eUICC certificate's subject serialNumber)."""
    text = eid.hex() if isinstance(eid, bytes) else eid
    if len(text) != 32 or any(c not in string.digits for c in text):
        raise ValueError(f"an EID is 32 decimal digits, got {text!r}")
    return text


def eid_with_check_digits(first30: str) -> str:
    """Append the two check digits of an EID (ISO 7064 MOD 97-10, as in IBANs): EID % 97 == 1."""
    if len(first30) != 30 or any(c not in string.digits for c in first30):
        raise ValueError("need the first 30 decimal digits of the EID")
    return first30 + f"{98 - (int(first30) * 100) % 97:02d}"


def eid_check_digits_ok(eid: bytes | str) -> bool:
    return int(eid_string(eid)) % 97 == 1


def euicc_eid(cert: x509.Certificate) -> str:
    """The EID in an eUICC certificate's subject serialNumber."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if len(attrs) != 1:
        raise CertificateInvalid(f"{_who(cert)}: subject needs exactly one serialNumber (the EID)")
    value = attrs[0].value
    try:
        return eid_string(value if isinstance(value, str) else value.decode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CertificateInvalid(f"{_who(cert)}: serialNumber is not an EID: {exc}") from exc


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def eum_permitted_prefixes(eum_cert: x509.Certificate) -> list[tuple[str | None, str]]:
    """(organization, EID prefix) of each permitted directoryName subtree of the EUM."""
    nc = _ext(eum_cert, x509.NameConstraints)
    if not isinstance(nc, x509.NameConstraints) or not nc.permitted_subtrees:
        return []
    out: list[tuple[str | None, str]] = []
    for sub in nc.permitted_subtrees:
        if isinstance(sub, x509.DirectoryName):
            prefix = _attr(sub.value, NameOID.SERIAL_NUMBER)
            if prefix is not None:
                out.append((_attr(sub.value, NameOID.ORGANIZATION_NAME), prefix))
    return out


def eid_permitted_by_eum(euicc_cert: x509.Certificate, eum_cert: x509.Certificate) -> bool:
    """SGP.22 v2 ("Variant O") EUM name constraint, read the way SGP.22 means it.

    The EUM certificate's critical nameConstraints permits directoryName subtrees
    {O = EUM organisation, serialNumber = EIN/IIN prefix}. The eUICC certificate's subject
    is in a subtree when its O equals the subtree's O and its serialNumber (the EID) *starts
    with* the subtree's serialNumber. RFC 5280 would compare serialNumber for equality, which
    no EID could meet; hence this RSP-specific check instead of a generic path validator.
    (SGP.22 v3 moved the prefixes to a permittedEins extension; this PKI uses v2 form.)
    """
    eid = euicc_eid(euicc_cert)
    org = _attr(euicc_cert.subject, NameOID.ORGANIZATION_NAME)
    return any(eid.startswith(prefix) and (p_org is None or p_org == org)
               for p_org, prefix in eum_permitted_prefixes(eum_cert))


def verify_euicc_chain(euicc_cert: x509.Certificate, eum_cert: x509.Certificate,
                       ci_cert: x509.Certificate, *, at: datetime | None = None) -> str:
    """CERT.EUICC.ECDSA <- CERT.EUM.ECDSA <- CERT.CI.ECDSA (SGP.22 §5.6.2 checks); returns the EID."""
    verify_chain(euicc_cert, [eum_cert], ci_cert, at=at, leaf_role=OID_RSP_ROLE_EUICC)
    check_role(eum_cert, OID_RSP_ROLE_EUM)
    if not eid_permitted_by_eum(euicc_cert, eum_cert):
        raise CertificateInvalid(
            f"EID {euicc_eid(euicc_cert)} is outside the name constraint of EUM {_who(eum_cert)}")
    return euicc_eid(euicc_cert)


def verify_server_certificate(cert: x509.Certificate, ci_cert: x509.Certificate,
                              role: x509.ObjectIdentifier, *, at: datetime | None = None) -> None:
    """CERT.DPauth / CERT.DPpb / CERT.DP.TLS directly under the CI, with the expected role."""
    verify_chain(cert, [], ci_cert, at=at, leaf_role=role)

