"""PLMN identities: "MCCMNC" digit strings, their 3-byte 3GPP form, and a profile's home network.

Devices report their serving network as digits ("20801"). The eIM wants rPLMN as the three
bytes of 3GPP TS 24.008 §10.5.1.3 (MCC digit 2|1, MNC digit 3|MCC digit 3, MNC digit 2|1,
F for a 2-digit MNC). A profile's home network is its owner's MCC/MNC, carried in the
same 3-byte form in ProfileInfo.profileOwner.mccMnc (SGP.22 §5.7.15, ProfileInfoListResponse
BF2D): the ICCID does not tell it (its issuer number is not a PLMN).
"""

from __future__ import annotations

from typing import Any

from gateway.errors import DecodeError
from gateway.spec import codec

PROFILE_STATE_ENABLED = 1


def valid(plmn: str | None) -> bool:
    return plmn is not None and plmn.isdigit() and len(plmn) in (5, 6)


def mcc(plmn: str) -> str:
    """The country part (mobile country code) of an MCCMNC string."""
    return plmn[:3]


def to_bytes(plmn: str) -> bytes:
    """MCCMNC digits -> 3 bytes (TS 24.008 §10.5.1.3)."""
    if not valid(plmn):
        raise ValueError(f"not a PLMN of 5 or 6 digits: {plmn!r}")
    d = [int(c) for c in plmn[:3]]
    m = [int(c) for c in plmn[3:]]
    mnc3 = m[2] if len(m) == 3 else 0xF
    return bytes([d[1] << 4 | d[0], mnc3 << 4 | d[2], m[1] << 4 | m[0]])


def from_bytes(data: bytes) -> str:
    """3 bytes (TS 24.008 §10.5.1.3) -> MCCMNC digits; DecodeError when not BCD."""
    if len(data) != 3:
        raise DecodeError(f"a PLMN is 3 bytes, got {len(data)}", type_name="PLMN")
    nibbles = [data[0] & 0xF, data[0] >> 4, data[1] & 0xF, data[2] & 0xF, data[2] >> 4, data[1] >> 4]
    if any(n > 9 for n in nibbles[:5]) or not (nibbles[5] <= 9 or nibbles[5] == 0xF):
        raise DecodeError(f"not BCD digits: {data.hex()}", type_name="PLMN")
    return "".join(str(n) for n in nibbles if n != 0xF)


def enabled_profile_home(profile_info_list: bytes) -> tuple[bytes | None, str] | None:
    """(ICCID, home PLMN) of the enabled profile in a ProfileInfoListResponse (BF2D), or None
    when no profile is enabled or the enabled one does not carry its owner."""
    value = codec.decode("ProfileInfoListResponse", profile_info_list)
    if not (isinstance(value, tuple) and value[0] == "profileInfoListOk"):
        return None
    for info in value[1]:
        entry: dict[str, Any] = info
        if entry.get("profileState") != PROFILE_STATE_ENABLED and entry.get("profileState") != "enabled":
            continue
        owner = entry.get("profileOwner")
        if not owner:
            return None
        return entry.get("iccid"), from_bytes(bytes(owner["mccMnc"]))
    return None
