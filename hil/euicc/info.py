"""What the eUICC says about itself: EUICCInfo1 and EUICCInfo2 (SGP.22 §5.7.8, SGP.32 §5.9.x).

Values are those of a small SGP.32 v1.2 IoT eUICC built on SGP.22 v2.5: one CI (the test
PKI's), P-256, USIM + ISIM + Java Card, IPAd mode (the IPA runs outside the eUICC, here in
the gateway), fallback supported, eCall not supported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.spec import codec

if TYPE_CHECKING:
    from hil.euicc.euicc import SoftEuicc

SVN = bytes([2, 5, 0])
PROFILE_VERSION = bytes([2, 3, 1])
FIRMWARE_VERSION = bytes([1, 0, 0])
PP_VERSION = bytes([1, 0, 0])
SGP32_VERSION = bytes([1, 2, 0])
TOTAL_NVM = 512 * 1024
PROFILE_FOOTPRINT = 48 * 1024
FREE_RAM = 16 * 1024


def bits(*positions: int, size: int | None = None) -> tuple[bytes, int]:
    """A named-bit BIT STRING value (asn1tools form) with the given bits set."""
    nbits = size if size is not None else max(positions, default=-1) + 1
    data = bytearray((nbits + 7) // 8)
    for p in positions:
        data[p // 8] |= 0x80 >> (p % 8)
    return bytes(data), nbits


def has_bit(bit_string: tuple[bytes, int], position: int) -> bool:
    data, nbits = bit_string
    if position >= nbits:
        return False
    return bool(data[position // 8] & (0x80 >> (position % 8)))


def free_nvm(euicc: SoftEuicc) -> int:
    return max(0, TOTAL_NVM - PROFILE_FOOTPRINT * len(euicc.state.profiles))


def ext_card_resource(euicc: SoftEuicc) -> bytes:
    """SGP.22 §4.4 extended card resource: installed applications, free NVM, free RAM."""
    def field(tag: int, n: int, width: int) -> bytes:
        return bytes([tag, width]) + n.to_bytes(width, "big")
    return field(0x81, len(euicc.state.profiles), 1) + field(0x82, free_nvm(euicc), 3) + field(0x83, FREE_RAM, 2)


def euicc_info1(euicc: SoftEuicc) -> dict[str, Any]:
    pkids = euicc.identity.ci_pkids
    return {"svn": SVN, "euiccCiPKIdListForVerification": pkids, "euiccCiPKIdListForSigning": pkids}


def euicc_info2(euicc: SoftEuicc) -> dict[str, Any]:
    pkids = euicc.identity.ci_pkids
    return {
        "profileVersion": PROFILE_VERSION,
        "svn": SVN,
        "euiccFirmwareVer": FIRMWARE_VERSION,
        "extCardResource": ext_card_resource(euicc),
        "uiccCapability": bits(1, 2, 4, 14, 19, 24, size=30),
        "rspCapability": bits(0, 3, size=6),
        "euiccCiPKIdListForVerification": pkids,
        "euiccCiPKIdListForSigning": pkids,
        "euiccCategory": 1,
        "ppVersion": PP_VERSION,
        "sasAcreditationNumber": "IPAE-TEST-SAS-0001",
        "ipaMode": 0,
        "iotSpecificInfo": {"iotVersion": [SGP32_VERSION], "fallbackSupported": None},
    }


def euicc_info1_der(euicc: SoftEuicc) -> bytes:
    return codec.encode("EUICCInfo1", euicc_info1(euicc))


def euicc_info2_der(euicc: SoftEuicc) -> bytes:
    return codec.encode("EUICCInfo2", euicc_info2(euicc))
