"""Bound Profile Package segmentation for LoadBoundProfilePackage (SGP.22 §2.5.5, §5.7.6).

Theory of operation. The SM-DP+ hands the IPA a BoundProfilePackage (tag BF36) whose
contents are protected end to end between the SM-DP+ and the eUICC (SCP03t). The IPA does
not (and cannot) look inside; it only cuts the DER into the ES8+ segments the eUICC expects,
in this order, each sent as its own STORE DATA sequence (one ES10b call per segment):

    BF36 tag+length + BF23 TLV        InitialiseSecureChannel
    A0 tag+length + its 87 TLV        ConfigureISDP        (firstSequenceOf87)
    A1 tag+length                     StoreMetadata header (sequenceOf88)
    each 88 TLV                       StoreMetadata
    A2 tag+length + its 87 TLV        ReplaceSessionKeys   (secondSequenceOf87, optional)
    A3 tag+length                     LoadProfileElements header (sequenceOf86)
    each 86 TLV                       LoadProfileElements

Segments are slices of the received bytes (`gateway.spec.tlv` finds the offsets); nothing is
decoded or re-encoded, so what the eUICC MACs is exactly what the SM-DP+ sent. Intermediate
segments answer 9000 without data; only the last one answers ProfileInstallationResult
(BF37), and a response with data before the last segment is an error result that ends the
load (`segment_response` says which). A package that is not shaped as above (missing or misplaced element, unknown tag,
trailing bytes) is refused with `DecodeError` before anything is sent to the card.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gateway.errors import DecodeError, LocalProtocolError
from gateway.spec import apdu, tlv
from gateway.spec.tlv import ByteString, Tlv

TAG_BOUND_PROFILE_PACKAGE: Final = 0xBF36
TAG_INITIALISE_SECURE_CHANNEL: Final = 0xBF23
TAG_FIRST_SEQUENCE_OF_87: Final = 0xA0
TAG_SEQUENCE_OF_88: Final = 0xA1
TAG_SECOND_SEQUENCE_OF_87: Final = 0xA2
TAG_SEQUENCE_OF_86: Final = 0xA3
TAG_PROFILE_INSTALLATION_RESULT: Final = 0xBF37

_TYPE = "BoundProfilePackage"


@dataclass(frozen=True, slots=True)
class Segment:
    """One ES8+ segment: `bpp[start:end]`, named after the ES8+ function it carries."""

    function: str  # InitialiseSecureChannel | ConfigureISDP | StoreMetadata | ReplaceSessionKeys | LoadProfileElements
    header_only: bool  # the tag+length of a sequence, sent before its elements
    start: int
    end: int


def _fail(message: str, offset: int) -> DecodeError:
    return DecodeError(message, type_name=_TYPE, offset=offset)


def _rewrap(exc: DecodeError, context: str) -> DecodeError:
    out = DecodeError(f"{context}{exc}", type_name=_TYPE)
    out.offset = exc.offset
    return out


def _walk(buf: ByteString, parent: Tlv) -> list[Tlv]:
    try:
        return tlv.children(buf, parent)
    except DecodeError as exc:
        raise _rewrap(exc, f"inside tag {parent.tag:X}: ") from exc


def _single_87(buf: ByteString, seq: Tlv, function: str) -> Segment:
    inner = _walk(buf, seq)
    if len(inner) != 1 or inner[0].tag != 0x87:
        found = " ".join(f"{t.tag:X}" for t in inner) or "nothing"
        raise _fail(f"tag {seq.tag:X} ({function}) must hold exactly one 87, holds {found}", seq.start)
    return Segment(function, False, seq.start, seq.end)


def _header_and_each(buf: ByteString, seq: Tlv, element_tag: int, function: str) -> list[Segment]:
    elements = _walk(buf, seq)
    if not elements:
        raise _fail(f"tag {seq.tag:X} ({function}) is empty", seq.start)
    out = [Segment(function, True, seq.start, seq.value_start)]
    for e in elements:
        if e.tag != element_tag:
            raise _fail(f"tag {e.tag:X} inside {seq.tag:X}, expected {element_tag:X}", e.start)
        out.append(Segment(function, False, e.start, e.end))
    return out


def plan(bpp: ByteString) -> list[Segment]:
    """The ES8+ segments of `bpp` in sending order, as offsets (SGP.22 §2.5.5)."""
    try:
        outer = tlv.read_single(bpp)
    except DecodeError as exc:
        raise _rewrap(exc, "") from exc
    if outer.tag != TAG_BOUND_PROFILE_PACKAGE:
        raise _fail(f"outer tag {outer.tag:X}, expected BF36", 0)
    parts = _walk(bpp, outer)
    tags = [p.tag for p in parts]
    expected = ([TAG_INITIALISE_SECURE_CHANNEL, TAG_FIRST_SEQUENCE_OF_87, TAG_SEQUENCE_OF_88]
                + ([TAG_SECOND_SEQUENCE_OF_87] if TAG_SECOND_SEQUENCE_OF_87 in tags else [])
                + [TAG_SEQUENCE_OF_86])
    if tags != expected:
        got = " ".join(f"{t:X}" for t in tags) or "nothing"
        want = "BF23 A0 A1 [A2] A3"
        raise _fail(f"BF36 holds {got}; expected {want} in that order", outer.value_start)
    isc, first87, seq88 = parts[0], parts[1], parts[2]
    out = [Segment("InitialiseSecureChannel", False, outer.start, isc.end)]
    out.append(_single_87(bpp, first87, "ConfigureISDP"))
    out += _header_and_each(bpp, seq88, 0x88, "StoreMetadata")
    if len(parts) == 5:
        out.append(_single_87(bpp, parts[3], "ReplaceSessionKeys"))
    out += _header_and_each(bpp, parts[-1], 0x86, "LoadProfileElements")
    return out


def segments(bpp: bytes) -> list[bytes]:
    """The ES8+ segments of `bpp` in sending order: exact slices of the input."""
    view = memoryview(bpp)
    return [bytes(view[s.start:s.end]) for s in plan(view)]


def store_data_apdus(bpp: bytes, segment_size: int = apdu.DEFAULT_SEGMENT_SIZE, *,
                     wrap_block_number: bool = False) -> list[list[bytes]]:
    """One STORE DATA sequence (list of basic-channel APDUs) per ES8+ segment."""
    view = memoryview(bpp)
    out = []
    for s in plan(view):
        try:
            out.append(apdu.store_data(view[s.start:s.end], segment_size,
                                       wrap_block_number=wrap_block_number))
        except LocalProtocolError as exc:
            raise LocalProtocolError(f"{s.function} segment at offset {s.start}: {exc}") from exc
    return out


def last_segment_index(segment_list: Sequence[object]) -> int:
    """Index of the segment whose response is ProfileInstallationResult (BF37).

    Every earlier segment must answer 9000 with no data; data there is an early error result.
    """
    if not segment_list:
        raise LocalProtocolError("a BPP has at least five segments; got none")
    return len(segment_list) - 1


def is_last_segment(index: int, segment_list: Sequence[object]) -> bool:
    return index == last_segment_index(segment_list)


def segment_response(index: int, segment_count: int, data: bytes, sw: int) -> bytes | None:
    """What the response to segment `index` means for the load (SGP.22 §5.7.6).

    None: the segment was accepted, send the next one. bytes: the ProfileInstallationResult
    (BF37, exact bytes as received) that ends the load, either after the last segment or
    early, as an error result. A failing status word raises its typed CardError.
    """
    if not 0 <= index < segment_count:
        raise LocalProtocolError(f"segment {index} of {segment_count}")
    apdu.check_sw(sw)
    if data:
        tag = tlv.read_single(data).tag
        if tag != TAG_PROFILE_INSTALLATION_RESULT:
            raise DecodeError(f"segment {index} answered tag {tag:X}, expected BF37",
                              type_name="ProfileInstallationResult", offset=0)
        return data
    if index == segment_count - 1:
        raise DecodeError("the last segment answered no ProfileInstallationResult",
                          type_name="ProfileInstallationResult")
    return None
