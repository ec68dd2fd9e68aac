"""Test support for the codec: the independent oracle and type-driven value generators.

The oracle is pycrate's compilation of the GSMA modules shipped by `asn1play` (test-only:
GPL, slow to import, never used by gateway/ or hil/). Its value conventions differ from
asn1tools', so `Oracle.to_oracle` / `Oracle.from_oracle` convert, driven by the project's
own type tree (`codec.schema`):

    asn1tools (project)            pycrate (oracle)
    NULL          None             0
    BIT STRING    (bytes, nbits)   (int, nbits), first bit most significant
    OID           "1.2.3"          (1, 2, 3)
    Certificate   DER bytes        decoded X.509 value (converted through its DER)
    SubjectPublicKeyInfo           converted through its DER (pycrate decodes the open
                                   `parameters` into its own internal form)

`values(t)` builds a hypothesis strategy for any type of the project's modules, with the
sizes the type's constraints allow, every OPTIONAL member sometimes present and every
CHOICE alternative reachable.
"""

from __future__ import annotations

import datetime
import functools
import importlib
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import strategies as st

from gateway.spec import codec, tlv
from gateway.spec.codec import AsnType

ORACLE_MODULE = "asn1_play.generated_code.asn1.GSMA.SGP_32.v1_2.python_gen.sgp32.sgp32"

# The project's stand-ins for imported types, and where the oracle defines them.
STAND_INS = {
    ("RSPDefinitions", "Certificate"): ("PKIX1Explicit88", "Certificate"),
    ("RSPDefinitions", "SubjectPublicKeyInfo"): ("PKIX1Explicit88", "SubjectPublicKeyInfo"),
    ("RSPDefinitions", "AlgorithmIdentifier"): ("PKIX1Explicit88", "AlgorithmIdentifier"),
    ("RSPDefinitions", "SubjectKeyIdentifier"): ("PKIX1Implicit88", "SubjectKeyIdentifier"),
    ("RSPDefinitions", "UICCCapability"): ("PEDefinitions", "UICCCapability"),
}
VIA_DER = {("RSPDefinitions", "SubjectPublicKeyInfo"), ("RSPDefinitions", "AlgorithmIdentifier")}


def _make_certificates() -> list[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    certs = []
    for cn in ("Test EUM", "Test eUICC 89049032"):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc))
                .not_valid_after(datetime.datetime(2054, 1, 1, tzinfo=datetime.timezone.utc))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
                .sign(key, hashes.SHA256()))
        certs.append(cert.public_bytes(serialization.Encoding.DER))
    return certs


CERTIFICATES = _make_certificates()


def _spki_values() -> list[Any]:
    from cryptography import x509

    return [codec.decode("SubjectPublicKeyInfo",
                         x509.load_der_x509_certificate(c).public_key().public_bytes(
                             encoding=_der(), format=_spki()))
            for c in CERTIFICATES]


def _der() -> Any:
    from cryptography.hazmat.primitives import serialization
    return serialization.Encoding.DER


def _spki() -> Any:
    from cryptography.hazmat.primitives import serialization
    return serialization.PublicFormat.SubjectPublicKeyInfo


OPEN_TYPE_VALUES = [bytes.fromhex("0500"), bytes.fromhex("0403010203"), bytes.fromhex("06032a0304"),
                    bytes.fromhex("300380010a")]


def bits_to_int(value: tuple[bytes, int]) -> tuple[int, int]:
    data, nbits = value
    if nbits == 0:
        return (0, 0)
    return (int.from_bytes(data, "big") >> (8 * len(data) - nbits), nbits)


def int_to_bits(value: tuple[int, int]) -> tuple[bytes, int]:
    number, nbits = value
    size = (nbits + 7) // 8
    return ((number << (8 * size - nbits)).to_bytes(size, "big"), nbits)


class Oracle:
    """pycrate's GSMA modules, with conversions to and from the project's conventions."""

    def __init__(self) -> None:
        # Types are taken from the generated module's classes, not from pycrate's GLOBAL.MOD
        # registry, which importing another version (the v1.0 compatibility tests) overwrites.
        self.module = importlib.import_module(ORACLE_MODULE)

    @functools.cache
    def known_certificates(self) -> list[tuple[bytes, Any]]:
        """The sample certificates with pycrate's decoding: converting back from pycrate's
        X.509 value by lookup instead of re-encoding keeps the tests fast."""
        cert = self.obj("RSPDefinitions", "Certificate")
        out = []
        for der in CERTIFICATES:
            cert.from_der(der)
            out.append((der, cert.get_val()))
        return out

    def obj(self, module: str, name: str) -> Any:
        module, name = STAND_INS.get((module, name), (module, name))
        try:
            return getattr(getattr(self.module, module), name)
        except AttributeError:
            raise KeyError(f"{module}.{name}") from None

    def to_oracle(self, t: AsnType, value: Any) -> Any:
        key = (t.module, t.name) if t.name else None
        if t.kind == "Certificate":
            for der, decoded in self.known_certificates():
                if value == der:
                    return decoded
            cert = self.obj("RSPDefinitions", "Certificate")
            cert.from_der(value)
            return cert.get_val()
        if key in VIA_DER:
            assert key is not None
            o = self.obj(*key)
            o.from_der(codec.encode(f"{key[0]}.{key[1]}", value))
            return o.get_val()
        return self._walk(t, value, self.to_oracle, outbound=True)

    def from_oracle(self, t: AsnType, value: Any) -> Any:
        key = (t.module, t.name) if t.name else None
        if t.kind == "Certificate":
            for der, decoded in self.known_certificates():
                if value == decoded:
                    return der
            cert = self.obj("RSPDefinitions", "Certificate")
            cert.set_val(value)
            return cert.to_der()
        if key in VIA_DER:
            assert key is not None
            o = self.obj(*key)
            o.set_val(value)
            return codec.decode(f"{key[0]}.{key[1]}", o.to_der())
        return self._walk(t, value, self.from_oracle, outbound=False)

    @staticmethod
    def _walk(t: AsnType, value: Any, again: Any, *, outbound: bool) -> Any:
        kind = t.kind
        if kind in ("SEQUENCE", "SET"):
            members = {name: m for name, m, _ in t.members()}
            return {k: again(members[k], v) for k, v in value.items()}
        if kind == "CHOICE":
            members = {name: m for name, m, _ in t.members()}
            return (value[0], again(members[value[0]], value[1]))
        if kind in ("SEQUENCE OF", "SET OF"):
            return [again(t.element(), v) for v in value]
        if kind == "NULL":
            return 0 if outbound else None
        if kind == "BIT STRING":
            return bits_to_int(value) if outbound else int_to_bits(value)
        if kind == "OBJECT IDENTIFIER":
            return tuple(int(a) for a in value.split(".")) if outbound else ".".join(map(str, value))
        if kind in ("ANY", "ANY DEFINED BY"):
            return open_to_oracle(value) if outbound else open_from_oracle(value)
        return value


def open_to_oracle(raw: bytes) -> tuple[str, bytes]:
    """An open type's TLV -> pycrate's ('_unk_<class><constructed><number>', content)."""
    one = tlv.read_single(raw)
    first = raw[0]
    assert first & 0x1F != 0x1F, "single-octet tags only in the samples"
    return (f"_unk_{first >> 6}{(first >> 5) & 1}{first & 0x1F}", one.value_of(raw))


def open_from_oracle(value: tuple[str, bytes]) -> bytes:
    ident, content = value
    digits = ident[len("_unk_"):]
    first = (int(digits[0]) << 6) | (int(digits[1]) << 5) | int(digits[2:])
    header = bytes([first, len(content)]) if len(content) < 0x80 else None
    assert header is not None, "short samples only"
    return header + content


def normalize(t: AsnType, value: Any) -> Any:
    """`value` without members equal to their DEFAULT (DER leaves them out; asn1tools fills
    them in on decode, pycrate does not)."""
    kind = t.kind
    if kind in ("SEQUENCE", "SET"):
        out = {}
        for name, member, definition in t.members():
            if name not in value:
                continue
            if "default" in definition and value[name] == definition["default"]:
                continue
            out[name] = normalize(member, value[name])
        return out
    if kind == "CHOICE":
        members = {name: m for name, m, _ in t.members()}
        return (value[0], normalize(members[value[0]], value[1]))
    if kind in ("SEQUENCE OF", "SET OF"):
        return [normalize(t.element(), v) for v in value]
    if kind == "BIT STRING":
        return (bytes(value[0]), value[1])
    return value


def _size_range(definition: Mapping[str, Any], default_max: int) -> tuple[int, int]:
    size = definition.get("size")
    if not size:
        return 0, default_max
    first = size[0]
    if isinstance(first, (tuple, list)):
        lo, hi = first
    else:
        lo = hi = first
    lo = 0 if lo == "MIN" else int(lo)
    hi = max(lo, default_max) if hi == "MAX" else int(hi)
    return lo, min(hi, max(lo, default_max))


@functools.cache
def _named_values(module: str, name: str) -> st.SearchStrategy[Any]:
    return values(codec.schema(f"{module}.{name}"))


def values(t: AsnType, depth: int = 0) -> st.SearchStrategy[Any]:
    """Hypothesis strategy for values of `t` in the project's (asn1tools) conventions."""
    if t.name is not None and depth > 0:
        return st.deferred(lambda: _named_values(t.module, t.name))  # type: ignore[arg-type]
    kind = t.kind
    d = t.definition
    if t.name == "SubjectPublicKeyInfo":
        return st.sampled_from(_spki_values())
    if kind == "Certificate":
        return st.sampled_from(CERTIFICATES)
    if kind in ("ANY", "ANY DEFINED BY"):
        return st.sampled_from(OPEN_TYPE_VALUES)
    if kind in ("SEQUENCE", "SET"):
        required: dict[str, st.SearchStrategy[Any]] = {}
        optional: dict[str, st.SearchStrategy[Any]] = {}
        for name, member, definition in t.members():
            strategy = values(member, depth + 1)
            if definition.get("optional") or "default" in definition:
                optional[name] = strategy
            else:
                required[name] = strategy
        return st.fixed_dictionaries(required, optional=optional)
    if kind == "CHOICE":
        return st.one_of([st.tuples(st.just(name), values(member, depth + 1))
                          for name, member, _ in t.members()])
    if kind in ("SEQUENCE OF", "SET OF"):
        lo, hi = _size_range(d, 2)
        return st.lists(values(t.element(), depth + 1), min_size=lo, max_size=hi)
    if kind == "INTEGER":
        named = list(t.named_numbers.values())
        plain = st.integers(min_value=-(2**40), max_value=2**40)
        return st.one_of(st.sampled_from(named), plain) if named else plain
    if kind == "BOOLEAN":
        return st.booleans()
    if kind == "NULL":
        return st.none()
    if kind == "OCTET STRING":
        lo, hi = _size_range(d, 24)
        return st.binary(min_size=lo, max_size=hi)
    if kind == "BIT STRING":
        return st.integers(0, 20).flatmap(
            lambda n: st.integers(0, 2**n - 1).map(lambda v: int_to_bits((v, n))))
    if kind == "UTF8String":
        lo, hi = _size_range(d, 20)
        return st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                       min_size=lo, max_size=hi)
    if kind == "OBJECT IDENTIFIER":
        return st.tuples(st.integers(0, 2), st.integers(0, 39),
                         st.lists(st.integers(0, 2**32), max_size=5)).map(
            lambda p: ".".join(str(a) for a in (p[0], p[1], *p[2])))
    raise NotImplementedError(f"no strategy for {kind}")


@pytest.fixture(scope="session")
def oracle() -> Oracle:
    return Oracle()
