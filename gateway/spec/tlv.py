"""BER-TLV walking: where each tag, length and value sits in a buffer, nothing more.

Theory of operation. This is *not* an ASN.1 codec: DER encoding and decoding of RSP
messages is asn1tools' job (`gateway.spec.codec`). The walker exists for the two places
where decoding and re-encoding would be wrong:

- exact-bytes pass-through of signed sub-structures (euiccSigned1/2, EuiccPackageRequest,
  EuiccPackageResult, notifications): the bytes the signature covers are located by offset
  and forwarded as received, so a field added by a newer spec version survives;
- Bound Profile Package segmentation (SGP.22 §2.5.5): the BPP is cut into ES8+ segments by
  slicing the received bytes, never by re-encoding them.

A `Tlv` is four offsets into the caller's buffer; nothing is copied until the caller asks
for `value_of()`/`raw_of()`. Tags are the tag octets read as a big-endian integer (0xBF36,
0x5A, 0x80, 0xA3), which is how SGP.22/SGP.32 write them. Lengths may be in short or long
form (up to 4 length octets); the indefinite form is refused, as DER forbids it and no
RSP message uses it. Any truncated tag, length or value, and any length reaching past the
bound given by the caller, raises `DecodeError` with the offset of the offending octet.
Non-minimal (BER) length encodings are accepted: the walker reports what is there, the
codec judges DER validity.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from gateway.errors import DecodeError, LocalProtocolError

ByteString: TypeAlias = bytes | bytearray | memoryview

MAX_TAG_OCTETS = 4
MAX_LENGTH_OCTETS = 4


@dataclass(frozen=True, slots=True)
class Tlv:
    """One TLV located in a buffer: `buf[start:end]` is the whole TLV."""

    tag: int
    start: int
    value_start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.value_start

    @property
    def header(self) -> int:
        """Number of tag and length octets."""
        return self.value_start - self.start

    @property
    def constructed(self) -> bool:
        """Bit 6 of the first tag octet (X.690 §8.1.2.5)."""
        return bool(_first_tag_octet(self.tag) & 0x20)

    def value_of(self, buf: ByteString) -> bytes:
        return bytes(buf[self.value_start:self.end])

    def raw_of(self, buf: ByteString) -> bytes:
        """The exact bytes of the whole TLV (tag, length and value) as received."""
        return bytes(buf[self.start:self.end])


def _first_tag_octet(tag: int) -> int:
    return tag >> (8 * ((tag.bit_length() - 1) // 8)) if tag else 0


def _bounds(buf: ByteString, start: int, end: int | None) -> int:
    size = len(buf)
    stop = size if end is None else end
    if not 0 <= start <= stop <= size:
        raise LocalProtocolError(f"TLV bounds {start}..{stop} outside a buffer of {size} bytes")
    return stop


def read_tlv(buf: ByteString, pos: int = 0, end: int | None = None) -> Tlv:
    """The TLV starting at `pos`; its value must end at or before `end` (default: len(buf))."""
    stop = _bounds(buf, pos, end)
    if pos >= stop:
        raise DecodeError("truncated TLV: no tag octet", offset=pos)
    first = buf[pos]
    if first == 0x00:
        raise DecodeError("tag 00 (end-of-contents) outside an indefinite-length value", offset=pos)
    tag = first
    i = pos + 1
    if first & 0x1F == 0x1F:
        while True:
            if i >= stop:
                raise DecodeError("truncated multi-byte tag", offset=i)
            if i - pos >= MAX_TAG_OCTETS:
                raise DecodeError(f"tag longer than {MAX_TAG_OCTETS} octets", offset=pos)
            octet = buf[i]
            tag = (tag << 8) | octet
            i += 1
            if not octet & 0x80:
                break
    if i >= stop:
        raise DecodeError(f"truncated TLV: no length octet after tag {tag:X}", offset=i)
    first_len = buf[i]
    i += 1
    if first_len < 0x80:
        length = first_len
    elif first_len == 0x80:
        raise DecodeError(f"indefinite length in tag {tag:X}", offset=i - 1)
    else:
        count = first_len & 0x7F
        if count > MAX_LENGTH_OCTETS:
            raise DecodeError(f"{count} length octets in tag {tag:X} (at most {MAX_LENGTH_OCTETS})",
                              offset=i - 1)
        if i + count > stop:
            raise DecodeError(f"truncated length of tag {tag:X}", offset=i)
        length = int.from_bytes(buf[i:i + count], "big")
        i += count
    if length > stop - i:
        raise DecodeError(f"tag {tag:X} declares {length} value bytes, only {stop - i} available",
                          offset=pos)
    return Tlv(tag, pos, i, i + length)


def iter_tlvs(buf: ByteString, start: int = 0, end: int | None = None) -> Iterator[Tlv]:
    """Consecutive TLVs that exactly fill `buf[start:end]`."""
    stop = _bounds(buf, start, end)
    pos = start
    while pos < stop:
        tlv = read_tlv(buf, pos, stop)
        yield tlv
        pos = tlv.end


def children(buf: ByteString, parent: Tlv) -> list[Tlv]:
    """The TLVs inside a constructed TLV, in order."""
    if not parent.constructed:
        raise DecodeError(f"tag {parent.tag:X} is primitive: it has no children", offset=parent.start)
    return list(iter_tlvs(buf, parent.value_start, parent.end))


def outer_tag(buf: ByteString) -> int:
    """The tag of the TLV at the start of `buf` (its length is checked to fit in `buf`)."""
    return read_tlv(buf).tag


def read_single(buf: ByteString) -> Tlv:
    """The one TLV that makes up all of `buf`; trailing bytes are a DecodeError."""
    tlv = read_tlv(buf)
    if tlv.end != len(buf):
        raise DecodeError(f"{len(buf) - tlv.end} trailing bytes after tag {tlv.tag:X}", offset=tlv.end)
    return tlv


def child(buf: ByteString, parent: Tlv, tag: int) -> Tlv:
    """The first child of `parent` with `tag`; missing is a DecodeError."""
    for c in children(buf, parent):
        if c.tag == tag:
            return c
    raise DecodeError(f"tag {tag:X} missing in tag {parent.tag:X}", offset=parent.start)


def descend(buf: ByteString, tags: Sequence[int]) -> Tlv:
    """Follow a path of tags from the single outer TLV: descend(b, [0xBF38, 0xA0, 0x30]).

    The first tag must be the outer tag; each next one is the first child carrying it.
    """
    if not tags:
        raise LocalProtocolError("descend needs at least the outer tag")
    node = read_single(buf)
    if node.tag != tags[0]:
        raise DecodeError(f"outer tag {node.tag:X}, expected {tags[0]:X}", offset=0)
    for tag in tags[1:]:
        node = child(buf, node, tag)
    return node


def encode_tag(tag: int) -> bytes:
    """The tag octets of `tag` (as written in the specs: 0xBF36 -> b'\\xbf\\x36')."""
    if tag <= 0:
        raise LocalProtocolError(f"invalid tag {tag}")
    return tag.to_bytes((tag.bit_length() + 7) // 8, "big")


def encode_length(length: int) -> bytes:
    """DER length octets (minimal short or long form)."""
    if length < 0:
        raise LocalProtocolError(f"negative length {length}")
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    if len(body) > MAX_LENGTH_OCTETS:
        raise LocalProtocolError(f"length {length} needs more than {MAX_LENGTH_OCTETS} octets")
    return bytes([0x80 | len(body)]) + body


def header(tag: int, length: int) -> bytes:
    """Tag and length octets to put in front of `length` bytes that are passed through as-is."""
    return encode_tag(tag) + encode_length(length)
