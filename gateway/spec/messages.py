"""Recognise an RSP message by its outer tag: which ASN.1 type is this blob?

Theory of operation. ES10b requests and responses share their tag (BF2E is both
GetEuiccChallengeRequest and GetEuiccChallengeResponse), ESipa and ES9+ reuse ES10b tags
(BF41 is CancelSession on all three interfaces), so a tag gives a short list of candidate
types, most specific first: ES10b responses, ES10b requests, ESipa messages (IPA and eIM
side), BPP parts and notifications, ES9+/ES11 messages. `identify` picks the first
candidate whose DER re-encoding reproduces the input exactly, and otherwise the first one
that decodes at all (BER input, or fields of a newer version that the decoder skips).
"""

from __future__ import annotations

from typing import Any

from gateway.errors import DecodeError
from gateway.spec import codec, es10b, esipa, tlv

_EXTRA: tuple[tuple[int, str], ...] = (
    # BPP parts and signed elements (SGP.22 section 2.5.5, 5.5) and SGP.32 pieces
    (0xBF23, "InitialiseSecureChannelRequest"),
    (0xBF24, "ConfigureISDPRequest"),
    (0xBF25, "StoreMetadataRequest"),
    (0xBF26, "ReplaceSessionKeysRequest"),
    (0xBF27, "RSPDefinitions.ProfileInstallationResultData"),
    (0xBF2F, "RSPDefinitions.NotificationMetadata"),
    (0xBF53, "EimAcknowledgements"),
    (0xBF54, "ProfileDownloadTriggerRequest"),
    (0xBF54, "ProfileDownloadTriggerResult"),
    (0xE3, "ProfileInfo"),
    (0xE1, "ISDRProprietaryApplicationTemplateIoT"),
    # ES9+ / ES11 (SGP.22 section 6.5, 6.6), ASN.1 form
    (0xBF39, "RSPDefinitions.InitiateAuthenticationRequest"),
    (0xBF39, "RSPDefinitions.InitiateAuthenticationResponse"),
    (0xBF3B, "RSPDefinitions.AuthenticateClientResponseEs9"),
    (0xBF3A, "RSPDefinitions.GetBoundProfilePackageRequest"),
    (0xBF3A, "RSPDefinitions.GetBoundProfilePackageResponse"),
    (0xBF3D, "RSPDefinitions.HandleNotification"),
    (0xBF41, "RSPDefinitions.CancelSessionRequestEs9"),
    (0xBF41, "RSPDefinitions.CancelSessionResponseEs9"),
    (0xBF40, "RSPDefinitions.AuthenticateClientResponseEs11"),
    (0xBF3C, "EuiccConfiguredAddressesResponse"),
    (0xBF3C, "EuiccConfiguredAddressesRequest"),
)


def _candidates() -> dict[int, list[str]]:
    table: dict[int, list[str]] = {}

    def add(tag: int, type_name: str) -> None:
        names = table.setdefault(tag, [])
        if type_name not in names:
            names.append(type_name)

    for f in es10b.FUNCTIONS.values():
        add(f.response_tag, f.response)
    for f in es10b.FUNCTIONS.values():
        add(f.tag, f.request)
    for e in esipa.FUNCTIONS.values():
        for type_name in (e.request_type, e.response_type):
            if type_name is not None:
                add(tlv.outer_tag(_tag_probe(type_name)), type_name)
    for tag, type_name in _EXTRA:
        add(tag, type_name)
    return table


def _tag_probe(type_name: str) -> bytes:
    """The outer tag octets of a type, read from the parsed module (no value needed)."""
    definition = codec.schema(type_name).definition
    tag = definition.get("tag")
    if tag is None:
        raise ValueError(f"{type_name} has no tag of its own")
    number = int(tag["number"])
    cls = {"UNIVERSAL": 0x00, "APPLICATION": 0x40, None: 0x80, "PRIVATE": 0xC0}[tag.get("class")]
    constructed = 0x20
    if number < 31:
        return bytes([cls | constructed | number, 0])
    return bytes([cls | constructed | 0x1F, number, 0]) if number < 128 else \
        bytes([cls | constructed | 0x1F, 0x80 | (number >> 7), number & 0x7F, 0])


_table: dict[int, list[str]] | None = None


def candidates(tag: int) -> list[str]:
    """ASN.1 type names a message with outer tag `tag` may be, most specific first."""
    global _table
    if _table is None:
        _table = _candidates()
    return list(_table.get(tag, []))


def identify(data: bytes) -> tuple[str, Any]:
    """(type name, value) of an RSP message recognised by its outer tag; DecodeError if no
    candidate type decodes it."""
    if not data:
        raise DecodeError("no data", type_name="RSP message", offset=0)
    tag = tlv.outer_tag(data)
    names = candidates(tag)
    if not names:
        raise DecodeError(f"tag {tag:X} is not a known RSP message", type_name="RSP message", offset=0)
    decoded: list[tuple[str, Any]] = []
    errors: list[str] = []
    for name in names:
        try:
            value = codec.decode(name, data)
        except DecodeError as exc:
            errors.append(str(exc))
            continue
        try:
            if codec.encode(name, value) == bytes(data):
                return name, value
        except Exception:  # noqa: BLE001 - a value that does not re-encode just ranks lower
            pass
        decoded.append((name, value))
    if decoded:
        return decoded[0]
    raise DecodeError(f"tag {tag:X} matches no candidate type ({errors[0]})",
                      type_name=" | ".join(names), offset=0)
