"""ASN.1 codec for the RSP messages (Contract 1): DER out, BER in, one error class.

Theory of operation. The project's own modules `asn1/rsp.asn` (RSPDefinitions, SGP.22) and
`asn1/sgp32.asn` (SGP32Definitions, SGP.32 v1.2) are parsed once by asn1tools, on first use,
and compiled twice from that parse: the DER codec encodes, the BER codec decodes (it takes
indefinite lengths, and it stops on a SEQUENCE OF element with a wrong tag where asn1tools'
DER decoder loops forever). Measured: import 0.02 s, first use 0.3 s (0.2 s of it parsing),
then nothing. A pickled cache was considered and rejected: unpickling a file from a cache
directory is a code-execution risk for a daemon, to save 0.3 s once per process.

Type names: a bare name resolves in SGP32Definitions first, then RSPDefinitions (SGP.32
redefines several SGP.22 types with IoT fields); "RSPDefinitions.X" forces the module.

Values follow asn1tools' conventions (see Contract 1), with one project rule: a
`Certificate` (X.509, declared in rsp.asn by its three top-level parts as open types) is
presented to callers as the exact DER bytes of the whole certificate. Decoding joins the
three parts received under a SEQUENCE header; encoding splits the caller's DER with the
TLV walker. The certificate's content is therefore never re-encoded, and an implicitly
tagged certificate (IpaEuiccData.eumCertificate [5]) still yields plain DER (tag 30).

`schema(type_name)` exposes the parsed type tree (kind, members, element) for type-driven
mappings such as the ESipa JSON binding and the decode CLI.

Errors: every decoding failure (malformed BER, a constraint violated, trailing bytes, an
unknown type name, a CHOICE alternative added by a later version, which asn1tools would
return as (None, None)) is `DecodeError` naming the type and, when asn1tools reports it,
the offset. Fields a later version appends to an extensible SEQUENCE are skipped. Encoding
a value that does not fit the type is `LocalProtocolError`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from gateway.errors import DecodeError, LocalProtocolError
from gateway.spec import tlv

MODULES = ("SGP32Definitions", "RSPDefinitions")
_ASN_FILES = ("rsp.asn", "sgp32.asn")
CERTIFICATE = ("RSPDefinitions", "Certificate")
_CERT_PARTS = ("tbsCertificate", "signatureAlgorithm", "signatureValue")

BUILTIN_KINDS = frozenset({
    "SEQUENCE", "SET", "CHOICE", "SEQUENCE OF", "SET OF", "INTEGER", "ENUMERATED", "BOOLEAN",
    "NULL", "OCTET STRING", "BIT STRING", "OBJECT IDENTIFIER", "UTF8String", "IA5String",
    "PrintableString", "VisibleString", "ANY", "ANY DEFINED BY", "UTCTime", "GeneralizedTime",
})


class _Compiled:
    """The parsed modules and the compiled DER specification, built once."""

    def __init__(self) -> None:
        import asn1tools  # deferred: importing gateway.spec must stay cheap

        files = resources.files("gateway.spec") / "asn1"
        texts = [(files / name).read_text(encoding="utf-8") for name in _ASN_FILES]
        self.parsed: dict[str, Any] = asn1tools.parse_string("\n".join(texts))
        # Two codecs from one parse: asn1tools' DER codec encodes (canonical output); its BER
        # codec decodes (indefinite lengths, and it stops on an element of the wrong tag in a
        # SEQUENCE OF, where the DER codec's decoder loops forever without consuming input).
        self.encoder: Any = asn1tools.compile_dict(self.parsed, "der")
        self.decoder: Any = asn1tools.compile_dict(self.parsed, "ber")
        _fix_object_identifier_decoding()
        self.asn1_error: type[Exception] = asn1tools.Error
        self.fixup: dict[tuple[tuple[str, str], frozenset[str]], bool] = {}


def _fix_object_identifier_decoding() -> None:
    """asn1tools' BER decoder splits the first subidentifier as (v // 40, v % 40), which is
    wrong from 2.40 on (X.690 8.19.4: the first arc is 2 whenever v >= 80, and then the second
    arc is v - 80): it decodes 2.999.10 as 26.39.10. Its encoder is right. The decoder calls the
    module-level function at run time, so replacing that one function fixes every OID field."""
    from asn1tools.codecs import ber

    def decode_object_identifier(data: bytes, offset: int, end_offset: int) -> str:
        arcs: list[int] = []
        value = 0
        for position in range(offset, end_offset):
            value = (value << 7) | (data[position] & 0x7F)
            if not data[position] & 0x80:
                arcs.append(value)
                value = 0
        if not arcs or data[end_offset - 1] & 0x80:
            raise ber.DecodeError("truncated OBJECT IDENTIFIER")
        first = min(arcs[0] // 40, 2)
        return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))

    ber.decode_object_identifier = decode_object_identifier


_lock = threading.Lock()
_compiled: _Compiled | None = None


def _get() -> _Compiled:
    global _compiled
    if _compiled is None:
        with _lock:
            if _compiled is None:
                _compiled = _Compiled()
    return _compiled


def resolve(type_name: str) -> tuple[str, str]:
    """(module, name) of a type name; KeyError if no module defines it."""
    modules = _get().parsed
    if "." in type_name:
        module, name = type_name.split(".", 1)
        if module in modules and name in modules[module]["types"]:
            return module, name
        raise KeyError(type_name)
    for module in MODULES:
        if type_name in modules[module]["types"]:
            return module, type_name
    raise KeyError(type_name)


def type_names(module: str | None = None) -> list[str]:
    """Every type name defined by one module (or by all, module-qualified)."""
    modules = _get().parsed
    if module is not None:
        return list(modules[module]["types"])
    return [f"{m}.{n}" for m in MODULES for n in modules[m]["types"]]


@dataclass(frozen=True, slots=True)
class AsnType:
    """A node of the parsed type tree with references followed.

    `kind` is the built-in type ("SEQUENCE", "CHOICE", "OCTET STRING", ...) or "Certificate";
    `name` is the last type name on the reference chain (None for an inline type).
    """

    module: str
    kind: str
    definition: Mapping[str, Any]
    name: str | None

    def members(self) -> list[tuple[str, AsnType, Mapping[str, Any]]]:
        """(name, type, member definition) of a SEQUENCE, SET or CHOICE, extension marker dropped."""
        return [(m["name"], _node(self.module, m), m)
                for m in self.definition.get("members", []) if m is not None]

    def element(self) -> AsnType:
        return _node(self.module, self.definition["element"])

    @property
    def named_numbers(self) -> Mapping[str, int]:
        return dict(self.definition.get("named-numbers") or {})

    @property
    def named_bits(self) -> list[tuple[str, int]]:
        return [(n, int(b)) for n, b in self.definition.get("named-bits") or []]


def schema(type_name: str) -> AsnType:
    """The type tree of `type_name` (resolved as in `encode`/`decode`)."""
    try:
        module, name = resolve(type_name)
    except KeyError:
        raise LocalProtocolError(f"unknown ASN.1 type {type_name!r}") from None
    return _named(module, name)


def _named(module: str, name: str) -> AsnType:
    modules = _get().parsed
    seen: set[tuple[str, str]] = set()
    while True:
        if (module, name) == CERTIFICATE:
            return AsnType(module, "Certificate", modules[module]["types"][name], name)
        if (module, name) in seen:
            raise LocalProtocolError(f"circular type reference at {module}.{name}")
        seen.add((module, name))
        definition = modules[module]["types"][name]
        kind = definition["type"]
        if kind in BUILTIN_KINDS:
            return AsnType(module, kind, definition, name)
        module, name = _locate(module, kind)


def _node(module: str, definition: Mapping[str, Any]) -> AsnType:
    kind = definition["type"]
    if kind in BUILTIN_KINDS:
        return AsnType(module, kind, definition, None)
    return _named(*_locate(module, kind))


def _locate(module: str, name: str) -> tuple[str, str]:
    modules = _get().parsed
    if name in modules[module]["types"]:
        return module, name
    for source, names in modules[module].get("imports", {}).items():
        if name in names:
            return source, name
    raise LocalProtocolError(f"type {name!r} referenced in {module} is not defined")


_FIXUP_KINDS = frozenset({"Certificate", "ANY", "ANY DEFINED BY"})


def _needs_fixup(t: AsnType, kinds: frozenset[str] = _FIXUP_KINDS) -> bool:
    """Does a value of `t` contain a node of one of `kinds` (Certificate, open type, CHOICE)?"""
    cache = _get().fixup

    def visit(node: AsnType, stack: frozenset[tuple[str, str]]) -> bool:
        key = (node.module, node.name) if node.name else None
        if key is not None and (key, kinds) in cache:
            return cache[(key, kinds)]
        if node.kind in kinds:
            return True
        if key is not None and key in stack:
            return False
        inner = stack | {key} if key else stack
        if node.kind in ("SEQUENCE", "SET", "CHOICE"):
            result = any(visit(m, inner) for _, m, _ in node.members())
        elif node.kind in ("SEQUENCE OF", "SET OF"):
            result = visit(node.element(), inner)
        else:
            result = False
        if key is not None:
            cache[(key, kinds)] = result
        return result

    return visit(t, frozenset())


def _compiled_type(type_name: str, for_decode: bool) -> tuple[Any, AsnType]:
    try:
        module, name = resolve(type_name)
    except KeyError:
        message = f"unknown ASN.1 type {type_name!r}"
        if for_decode:
            raise DecodeError(message, type_name=type_name) from None
        raise LocalProtocolError(message) from None
    c = _get()
    spec = c.decoder if for_decode else c.encoder
    return spec.modules[module][name], _named(module, name)


def encode(type_name: str, value: Any) -> bytes:
    """DER of `value` as `type_name`; LocalProtocolError if the value does not fit."""
    compiled, t = _compiled_type(type_name, for_decode=False)
    if _needs_fixup(t):
        value = _to_asn1tools(t, value, type_name)
    try:
        compiled.check_types(value)
        compiled.check_constraints(value)
        return bytes(compiled.encode(value))
    except LocalProtocolError:
        raise
    except Exception as exc:  # asn1tools raises its own errors and also TypeError/ValueError/...
        raise LocalProtocolError(f"cannot encode {type_name}: {_describe(exc)}") from exc


def decode(type_name: str, data: bytes) -> Any:
    """The value of the BER/DER `data` as `type_name`; DecodeError on any failure."""
    compiled, t = _compiled_type(type_name, for_decode=True)
    c = _get()
    if not data:
        raise DecodeError("no data", type_name=type_name, offset=0)
    try:
        value, length = compiled.decode_with_length(bytes(data))
        compiled.check_constraints(value)
    except Exception as exc:  # never let a library exception escape
        offset = getattr(exc, "offset", None) if isinstance(exc, c.asn1_error) else None
        raise DecodeError(_describe(exc), type_name=type_name,
                          offset=offset if isinstance(offset, int) else None) from exc
    if length != len(data):
        raise DecodeError(f"{len(data) - length} trailing bytes", type_name=type_name, offset=length)
    value = _plain(value, type_name)
    if _needs_fixup(t):
        value = _from_asn1tools(t, value, type_name)
    return value


def _plain(value: Any, where: str) -> Any:
    """asn1tools' BER decoder yields bytearray: make every byte string `bytes` (hashable,
    what Contract 1 promises), and refuse the (None, None) it returns for a CHOICE
    alternative added by a later version."""
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        if len(value) == 2 and value[0] is None:
            raise DecodeError("CHOICE alternative unknown to this version", type_name=where)
        if len(value) == 2 and isinstance(value[0], str):
            return (value[0], _plain(value[1], f"{where}.{value[0]}"))
        return tuple(_plain(v, where) for v in value)
    return value


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _certificate_der(parts: Mapping[str, Any]) -> bytes:
    content = b"".join(bytes(parts[p]) for p in _CERT_PARTS)
    return b"\x30" + _der_length(len(content)) + content


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def certificate_parts(der: bytes) -> dict[str, bytes]:
    """The three top-level TLVs of a certificate's DER; LocalProtocolError if it is not one."""
    if not isinstance(der, (bytes, bytearray, memoryview)):
        raise LocalProtocolError(f"a Certificate is its DER bytes, not {type(der).__name__}")
    try:
        outer = tlv.read_single(der)
        if outer.tag != 0x30:
            raise LocalProtocolError(f"a Certificate starts with tag 30, not {outer.tag:X}")
        parts = tlv.children(der, outer)
    except DecodeError as exc:
        raise LocalProtocolError(f"not a DER certificate: {exc}") from exc
    if len(parts) != 3:
        raise LocalProtocolError(f"a Certificate has 3 top-level parts, not {len(parts)}")
    return {name: part.raw_of(der) for name, part in zip(_CERT_PARTS, parts)}


def _to_asn1tools(t: AsnType, value: Any, where: str) -> Any:
    """Caller's value -> asn1tools' value (Certificate DER -> its three open-type parts)."""
    return _map(t, value, where, outbound=True)


def _from_asn1tools(t: AsnType, value: Any, where: str) -> Any:
    return _map(t, value, where, outbound=False)


def _map(t: AsnType, value: Any, where: str, *, outbound: bool) -> Any:
    if not _needs_fixup(t):
        return value
    kind = t.kind
    if kind == "Certificate":
        if outbound:
            return certificate_parts(value)
        if not isinstance(value, Mapping):
            raise DecodeError("Certificate without its parts", type_name=where)
        return _certificate_der(value)
    if kind in ("ANY", "ANY DEFINED BY"):
        return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else value
    if kind in ("SEQUENCE", "SET"):
        if not isinstance(value, Mapping):
            return value  # asn1tools reports the type error with its own words
        out = dict(value)
        for name, member, _ in t.members():
            if name in out:
                out[name] = _map(member, out[name], f"{where}.{name}", outbound=outbound)
        return out
    if kind == "CHOICE":
        if not (isinstance(value, tuple) and len(value) == 2):
            return value
        alternative, inner = value
        for name, member, _ in t.members():
            if name == alternative:
                return (name, _map(member, inner, f"{where}.{name}", outbound=outbound))
        return value
    if kind in ("SEQUENCE OF", "SET OF"):
        if not isinstance(value, list):
            return value
        element = t.element()
        return [_map(element, v, f"{where}[{i}]", outbound=outbound) for i, v in enumerate(value)]
    return value
