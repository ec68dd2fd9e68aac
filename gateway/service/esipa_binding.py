"""ESipa JSON binding at the runtime's edge: the engine's DER in, the engine's DER out.

Theory of operation. The engine speaks only the ASN.1 binding: it builds the DER of an
EsipaMessageFromIpaToEim and reads the DER of an EsipaMessageFromEimToIpa (SGP.32 §6.3).
When `northbound.esipa_binding = "json"` (SGP.32 §6.2) the runtime converts at the wire:

- request: the DER is decoded, every structure the JSON binding carries as base64 of its
  DER (gateway.spec.esipa_json.SIGNED_TYPES, certificates) is replaced by the exact bytes
  the engine spliced in -- found in the DER, never re-encoded -- and the value becomes the
  JSON body of the function named by the message's alternative (its path follows from it);
- answer: the JSON body is decoded with those structures kept as the exact bytes received;
  the DER of EsipaMessageFromEimToIpa is encoded around them, and each must appear in it
  unchanged (a structure our ASN.1 cannot re-encode byte for byte -- BER, or fields of a
  newer spec version -- is refused rather than forwarded with a broken signature).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from gateway.spec import codec, esipa, esipa_json, tlv
from gateway.spec.codec import AsnType

_OPAQUE_KINDS = ("Certificate", "ANY", "ANY DEFINED BY")


def _is_opaque(t: AsnType) -> bool:
    return t.kind in _OPAQUE_KINDS or (t.name is not None and t.name in esipa_json.SIGNED_TYPES)


def _type_name(t: AsnType) -> str:
    assert t.name is not None
    return f"{t.module}.{t.name}"


def request_to_json(function: str, der: bytes) -> tuple[str, bytes]:
    """(JSON function name, JSON body) of the engine's DER request for ESipa `function`."""
    alternative, value = esipa.decode_from_ipa(der)
    f = esipa.function_of_ipa_message(alternative)
    if f.name != function or not f.from_ipa:
        raise LocalProtocolError(f"the engine's {function} body holds a {alternative}")
    exact = _Exact(der)
    value = exact.replace(codec.schema(f.request_type), value)
    return f.json_name, esipa_json.encode_request(f.name, value)


def answer_to_der(function: str, body: bytes) -> bytes:
    """DER of EsipaMessageFromEimToIpa for the eIM's JSON answer to `function` (b"" for none)."""
    f = esipa.FUNCTIONS[function]
    if not body or f.response is None or f.response_type is None:
        return b""
    value = esipa_json.decode_response(function, body)
    forwarded: list[bytes] = []
    value = _decode_opaque(codec.schema(f.response_type), value, forwarded)
    try:
        der = codec.encode(esipa.FROM_EIM, (f.response, value))
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"eIM's JSON answer to {function} does not fit {f.response_type}: {exc}") from exc
    for raw in forwarded:
        node = tlv.read_single(raw)
        if raw[node.value_start:] not in der:
            raise RemoteProtocolError(f"eIM's JSON answer to {function}: a signed structure "
                                      f"({node.tag:X}) would change on re-encoding; refused")
    return der


class _Exact:
    """Finds, for a decoded sub-value, the exact bytes it was decoded from in `der`."""

    def __init__(self, der: bytes) -> None:
        self.der = der
        self.nodes = list(_walk(der, 0, len(der)))

    def replace(self, t: AsnType, value: Any) -> Any:
        if _is_opaque(t):
            if t.kind in _OPAQUE_KINDS or isinstance(value, (bytes, bytearray)):
                return value     # certificates and open types are exact bytes already (codec contract)
            return self.find(_type_name(t), value)
        kind = t.kind
        if kind in ("SEQUENCE", "SET"):
            return {name: self.replace(m, value[name]) for name, m, _ in t.members() if name in value}
        if kind == "CHOICE":
            alternative, inner = value
            member = {n: m for n, m, _ in t.members()}[alternative]
            return (alternative, self.replace(member, inner))
        if kind in ("SEQUENCE OF", "SET OF"):
            element = t.element()
            return [self.replace(element, v) for v in value]
        return value

    def find(self, type_name: str, value: Any) -> bytes:
        """The structure with its own tag and the content bytes found in `der` (where the
        message tags it implicitly, only the tag differs; the JSON carries its own tag)."""
        candidate = codec.encode(type_name, value)
        own = tlv.read_single(candidate)
        content = candidate[own.value_start:]
        if any(node.value_of(self.der) == content for node in self.nodes if node.length == own.length):
            return candidate
        for node in self.nodes:     # content our ASN.1 does not re-encode alike (a newer version's fields)
            raw = tlv.header(own.tag, node.length) + node.value_of(self.der)
            try:
                if codec.decode(type_name, raw) == value:
                    return raw
            except DecodeError:
                continue
        raise LocalProtocolError(f"{type_name} not found as exact bytes in the engine's message")


def _walk(der: bytes, start: int, end: int) -> Iterator[tlv.Tlv]:
    """Every TLV of `der`, depth first (a primitive-looking content is not descended)."""
    for node in tlv.iter_tlvs(der, start, end):
        yield node
        if node.constructed:
            try:
                yield from _walk(der, node.value_start, node.end)
            except DecodeError:
                continue


def _decode_opaque(t: AsnType, value: Any, forwarded: list[bytes]) -> Any:
    """The codec value of a JSON-decoded value: opaque structures decoded, their bytes noted."""
    if _is_opaque(t):
        if t.kind in _OPAQUE_KINDS or not isinstance(value, (bytes, bytearray)):
            return value
        forwarded.append(bytes(value))
        return codec.decode(_type_name(t), bytes(value))
    kind = t.kind
    if kind in ("SEQUENCE", "SET"):
        return {name: _decode_opaque(m, value[name], forwarded) for name, m, _ in t.members() if name in value}
    if kind == "CHOICE":
        alternative, inner = value
        member = {n: m for n, m, _ in t.members()}[alternative]
        return (alternative, _decode_opaque(member, inner, forwarded))
    if kind in ("SEQUENCE OF", "SET OF"):
        element = t.element()
        return [_decode_opaque(element, v, forwarded) for v in value]
    return value
