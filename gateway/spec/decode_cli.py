"""`ipae-gateway decode <hex|base64|@file>`: what is this captured blob?

Prints one JSON object {"type": "<ASN.1 type name>", "value": {...}} for an ES10b command
or response, an ESipa message (ASN.1 binding), a BPP or one of its parts, a notification or
an ES9+/ES11 message in ASN.1 form. Field names are those of the ASN.1 modules; OCTET
STRINGs (certificates included) are lowercase hex; the other rules are those of the ESipa
JSON mapping (gateway.spec.esipa_json) without the base64-DER shortcut for signed parts.

Input: hex (spaces, colons allowed), base64, or @file holding either or raw DER. A whole
STORE DATA command (80..83 E2 P1 P2 Lc data) has its 5-byte header removed, and a response
ending with status word 9000 has it removed. `--type` forces the ASN.1 type. On input it
cannot decode the command prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import sys
from pathlib import Path

from gateway.errors import DecodeError, LocalProtocolError
from gateway.spec import codec, esipa_json, messages

_HEX_SEPARATORS = re.compile(r"[\s:]")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="hex, base64, or @file (raw DER, hex or base64)")
    parser.add_argument("--type", dest="type_name", default=None,
                        help="decode as this ASN.1 type (e.g. EuiccPackageRequest) instead of guessing")


def read_input(text: str) -> bytes:
    """The bytes named by the command-line argument."""
    if text.startswith("@"):
        try:
            raw = Path(text[1:]).read_bytes()
        except OSError as exc:
            raise DecodeError(f"cannot read {text[1:]}: {exc.strerror}") from exc
        try:
            return _text_to_bytes(raw.decode("ascii"))
        except (UnicodeDecodeError, DecodeError):
            return raw
    return _text_to_bytes(text)


def _text_to_bytes(text: str) -> bytes:
    compact = _HEX_SEPARATORS.sub("", text)
    if compact and len(compact) % 2 == 0 and re.fullmatch(r"[0-9a-fA-F]+", compact):
        return bytes.fromhex(compact)
    try:
        data = base64.b64decode(re.sub(r"\s", "", text), validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if not data:
        raise DecodeError("input is neither hex nor base64")
    return data


def _strip_framing(data: bytes) -> list[bytes]:
    """The input and, if it looks like an APDU, the payload without header or status word."""
    options = [data]
    if len(data) > 5 and data[0] & 0xFC == 0x80 and data[1] == 0xE2 and data[4] == len(data) - 5:
        options.append(data[5:])
    if len(data) > 2 and data[-2:] == b"\x90\x00":
        options.append(data[:-2])
    return options


def decode_blob(data: bytes, type_name: str | None = None) -> dict[str, object]:
    """{"type": ..., "value": ...} for one blob; DecodeError if nothing fits."""
    first_error: DecodeError | None = None
    for candidate in _strip_framing(data):
        try:
            if type_name is not None:
                value = codec.decode(type_name, candidate)
                name = type_name
            else:
                name, value = messages.identify(candidate)
        except DecodeError as exc:
            first_error = first_error or exc
            continue
        return {"type": name.split(".")[-1],
                "value": esipa_json.to_json(name, value, binary="hex", opaque=frozenset())}
    assert first_error is not None
    raise first_error


def run(args: argparse.Namespace) -> int:
    try:
        result = decode_blob(read_input(args.data), args.type_name)
    except (DecodeError, LocalProtocolError) as exc:
        print(f"ipae-gateway decode: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False))
    return 0
