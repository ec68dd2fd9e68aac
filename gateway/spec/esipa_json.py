"""ESipa, JSON binding: a type-driven mapping between codec values and JSON.

Theory of operation. In the JSON binding each ESipa function is `POST
/gsma/rsp2/esipa/<functionName>` (camelCase names from gateway.spec.esipa) whose body is the
JSON form of the function's ASN.1 request or response type (e.g. GetEimPackageRequest),
without the outer tag. The mapping is derived from the project's ASN.1 modules, so every
message has exactly one JSON form and back. Rules:

- SEQUENCE / SET -> object; keys are the ASN.1 component names (already camelCase); an
  absent OPTIONAL is an absent key; a DEFAULT may be absent.
- CHOICE -> object with exactly one key, the alternative's name: {"eimPackageError": 1}.
- SEQUENCE OF -> array.
- OCTET STRING -> base64 (RFC 4648, padded); the decode CLI uses lowercase hex instead.
- BIT STRING -> string of "0"/"1", one character per bit, first bit first: "101".
- INTEGER (named numbers too) -> number; BOOLEAN -> true/false; NULL -> null;
  UTF8String -> string; OBJECT IDENTIFIER -> dotted string "2.23.146.1".
- Certificate, open types (ANY) and the *signed or eUICC-bound structures* in
  `SIGNED_TYPES` -> base64 of their exact DER (the SGP.22 ES9+ JSON convention). These are
  never mapped field by field: on the way in they stay `bytes` in the value (the exact bytes
  received, to forward unchanged; decode them with gateway.spec.codec when their content
  matters); on the way out a `bytes` value is sent as it is and any other value is encoded
  with the codec first.
- Unknown keys are ignored (a newer eIM may add fields, as ASN.1 extensions would); a
  missing mandatory key, a wrong JSON type, bad base64 or a bad bit string is a DecodeError
  naming the JSON path.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from gateway.errors import DecodeError, LocalProtocolError
from gateway.spec import codec, tlv
from gateway.spec.codec import AsnType
from gateway.spec.esipa import BY_JSON_NAME, FUNCTIONS

JSON_PATH_PREFIX = "/gsma/rsp2/esipa/"
JSON_CONTENT_TYPE = "application/json;charset=UTF-8"

# Carried as base64 of their DER: signed by someone else, or sent on to the eUICC as is.
SIGNED_TYPES = frozenset({
    "EuiccPackageRequest", "EuiccPackageResult", "PendingNotification",
    "ProfileInstallationResult", "AuthenticateServerResponse", "PrepareDownloadResponse",
    "CancelSessionResponse", "ServerSigned1", "SmdpSigned2", "StoreMetadataRequest",
    "BoundProfilePackage", "EUICCInfo1", "EUICCInfo2", "CtxParams1",
})

_OPAQUE_KINDS = ("Certificate", "ANY", "ANY DEFINED BY")


def path(function: str) -> str:
    """POST path of an ESipa function in the JSON binding."""
    return JSON_PATH_PREFIX + FUNCTIONS[function].json_name


def to_json(type_name: str, value: Any, *, binary: str = "base64",
            opaque: frozenset[str] = SIGNED_TYPES) -> Any:
    """The JSON value (dicts, lists, str, int, bool, None) of a codec value of `type_name`."""
    return _Out(binary, opaque).map(codec.schema(type_name), value, type_name)


def from_json(type_name: str, obj: Any, *, opaque: frozenset[str] = SIGNED_TYPES) -> Any:
    """The codec value of the JSON value `obj` as `type_name` (opaque members as bytes)."""
    return _In(opaque).map(codec.schema(type_name), obj, "$")


def encode_request(function: str, value: Any) -> bytes:
    """JSON body of an ESipa request (IPA side; TransferEimPackage: the eIM's push)."""
    return _dumps(to_json(FUNCTIONS[function].request_type, value))


def decode_request(function: str, body: bytes) -> Any:
    return from_json(FUNCTIONS[function].request_type, _loads(body, function))


def encode_response(function: str, value: Any) -> bytes:
    f = FUNCTIONS[function]
    if f.response_type is None:
        raise LocalProtocolError(f"{function} has no response body")
    return _dumps(to_json(f.response_type, value))


def decode_response(function: str, body: bytes) -> Any:
    f = FUNCTIONS[function]
    if f.response_type is None:
        raise LocalProtocolError(f"{function} has no response body")
    return from_json(f.response_type, _loads(body, function))


def function_of_path(url_path: str) -> str:
    """The ESipa function name of a JSON-binding path; DecodeError if it is not one."""
    if url_path.startswith(JSON_PATH_PREFIX):
        f = BY_JSON_NAME.get(url_path[len(JSON_PATH_PREFIX):])
        if f is not None:
            return f.name
    raise DecodeError(f"{url_path!r} is not an ESipa JSON function path", type_name="ESipa JSON")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _loads(body: bytes, function: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not JSON: {exc}", type_name=f"ESipa JSON {function}") from exc


def bits_to_text(value: tuple[bytes, int]) -> str:
    data, nbits = value
    return "".join("1" if data[i // 8] & (0x80 >> (i % 8)) else "0" for i in range(nbits))


def text_to_bits(text: str) -> tuple[bytes, int]:
    if any(c not in "01" for c in text):
        raise ValueError("a bit string is made of 0 and 1")
    data = bytearray((len(text) + 7) // 8)
    for i, c in enumerate(text):
        if c == "1":
            data[i // 8] |= 0x80 >> (i % 8)
    return bytes(data), len(text)


def _is_opaque(t: AsnType, opaque: frozenset[str]) -> bool:
    return t.kind in _OPAQUE_KINDS or (t.name is not None and t.name in opaque)


class _Out:
    def __init__(self, binary: str, opaque: frozenset[str]) -> None:
        self.binary = binary
        self.opaque = opaque

    def bytes_(self, data: bytes) -> str:
        if self.binary == "hex":
            return bytes(data).hex()
        return base64.b64encode(bytes(data)).decode("ascii")

    def map(self, t: AsnType, value: Any, where: str) -> Any:
        if _is_opaque(t, self.opaque):
            if isinstance(value, (bytes, bytearray)):
                return self.bytes_(bytes(value))
            return self.bytes_(codec.encode(f"{t.module}.{t.name}", value))
        kind = t.kind
        try:
            if kind in ("SEQUENCE", "SET"):
                return {name: self.map(m, value[name], f"{where}.{name}")
                        for name, m, _ in t.members() if name in value}
            if kind == "CHOICE":
                alternative, inner = value
                member = dict((n, m) for n, m, _ in t.members())[alternative]
                return {alternative: self.map(member, inner, f"{where}.{alternative}")}
            if kind in ("SEQUENCE OF", "SET OF"):
                element = t.element()
                return [self.map(element, v, f"{where}[{i}]") for i, v in enumerate(value)]
            if kind == "OCTET STRING":
                return self.bytes_(value)
            if kind == "BIT STRING":
                return bits_to_text(value)
            if kind == "NULL":
                return None
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise LocalProtocolError(f"{where}: value does not fit {kind}: {exc!r}") from exc
        return value


class _In:
    def __init__(self, opaque: frozenset[str]) -> None:
        self.opaque = opaque

    @staticmethod
    def fail(where: str, message: str) -> DecodeError:
        return DecodeError(f"{where}: {message}", type_name="ESipa JSON")

    def b64(self, obj: Any, where: str) -> bytes:
        if not isinstance(obj, str):
            raise self.fail(where, f"expected base64 text, got {type(obj).__name__}")
        try:
            return base64.b64decode(obj, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self.fail(where, f"bad base64: {exc}") from exc

    def map(self, t: AsnType, obj: Any, where: str) -> Any:
        if _is_opaque(t, self.opaque):
            data = self.b64(obj, where)
            try:
                if t.kind == "Certificate":
                    codec.certificate_parts(data)
                elif t.kind in _OPAQUE_KINDS:
                    tlv.read_single(data)
                else:
                    codec.decode(f"{t.module}.{t.name}", data)  # checked; the exact bytes are kept
            except (DecodeError, LocalProtocolError) as exc:
                raise self.fail(where, str(exc)) from exc
            return data
        kind = t.kind
        if kind in ("SEQUENCE", "SET"):
            if not isinstance(obj, Mapping):
                raise self.fail(where, f"expected an object for {t.name or kind}")
            out = {}
            for name, m, definition in t.members():
                if name in obj:
                    out[name] = self.map(m, obj[name], f"{where}.{name}")
                elif not (definition.get("optional") or "default" in definition):
                    raise self.fail(where, f"missing {name!r}")
            return out
        if kind == "CHOICE":
            members = {n: m for n, m, _ in t.members()}
            if not isinstance(obj, Mapping) or len(obj) != 1:
                raise self.fail(where, f"a CHOICE is an object with one key, got {obj!r:.80}")
            ((alternative, inner),) = obj.items()
            if alternative not in members:
                raise self.fail(where, f"no alternative {alternative!r} in {t.name or 'CHOICE'}")
            return (alternative, self.map(members[alternative], inner, f"{where}.{alternative}"))
        if kind in ("SEQUENCE OF", "SET OF"):
            if not isinstance(obj, list):
                raise self.fail(where, "expected an array")
            element = t.element()
            return [self.map(element, v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if kind == "OCTET STRING":
            return self.b64(obj, where)
        if kind == "BIT STRING":
            if not isinstance(obj, str):
                raise self.fail(where, "expected a string of 0 and 1")
            try:
                return text_to_bits(obj)
            except ValueError as exc:
                raise self.fail(where, str(exc)) from exc
        if kind in ("INTEGER", "ENUMERATED"):
            if kind == "ENUMERATED" and isinstance(obj, str):
                return obj
            if not isinstance(obj, int) or isinstance(obj, bool):
                raise self.fail(where, "expected an integer")
            return obj
        if kind == "BOOLEAN":
            if not isinstance(obj, bool):
                raise self.fail(where, "expected true or false")
            return obj
        if kind == "NULL":
            if obj is not None:
                raise self.fail(where, "expected null")
            return None
        if kind == "OBJECT IDENTIFIER":
            if not (isinstance(obj, str) and obj and all(a.isdigit() for a in obj.split("."))):
                raise self.fail(where, "expected a dotted object identifier")
            return obj
        if not isinstance(obj, str):
            raise self.fail(where, f"expected a string for {kind}")
        return obj
