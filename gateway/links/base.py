"""What every device-link adapter (CoAP, MQTT, serial, in-memory) shares.

Theory of operation. An adapter authenticates the link identity (a DTLS PSK identity, an MQTT
username, a serial port), maps it to exactly one EID through a `DeviceRegistry`, decodes the
uplink, refuses it when the EID it claims differs from the bound one, and only then calls
`UplinkHandler.exchange(eid, uplink)`. Whatever goes wrong on the way becomes an ErrorMsg
downlink: every uplink gets exactly one downlink. `answer()` is that sequence, shared by all
adapters so they behave identically.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import AccessDenied, DecodeError, GatewayError, UnknownDevice
from gateway.links.protocol import (
    Downlink,
    ErrorCode,
    ErrorMsg,
    Uplink,
    decode_uplink,
    encode_downlink,
    error_reply,
    uplink_eid,
)

log = logging.getLogger(__name__)


class UplinkHandler(Protocol):
    async def exchange(self, eid: bytes, uplink: Uplink) -> Downlink: ...


@dataclass(frozen=True, slots=True)
class DeviceCredential:
    """One device's link identity: its DTLS PSK identity / MQTT username, key and EID."""

    identity: str
    eid: bytes
    secret: bytes  # DTLS PSK, or MQTT password (UTF-8)


class DeviceRegistry:
    """identity -> (EID, secret); each identity is bound to exactly one EID and vice versa."""

    def __init__(self, devices: Iterable[DeviceCredential] = ()) -> None:
        self._by_identity: dict[str, DeviceCredential] = {}
        self._by_eid: dict[bytes, DeviceCredential] = {}
        for d in devices:
            self.add(d)

    def add(self, device: DeviceCredential) -> None:
        if len(device.eid) != 16:
            raise ValueError(f"EID must be 16 bytes, got {len(device.eid)}")
        if not device.identity or not device.secret:
            raise ValueError("identity and secret must not be empty")
        if device.identity in self._by_identity or device.eid in self._by_eid:
            raise ValueError(f"identity {device.identity!r} or EID {device.eid.hex()} already bound")
        self._by_identity[device.identity] = device
        self._by_eid[device.eid] = device

    def by_identity(self, identity: str) -> DeviceCredential:
        try:
            return self._by_identity[identity]
        except KeyError:
            raise UnknownDevice(f"unknown link identity {identity!r}") from None

    def by_eid(self, eid: bytes) -> DeviceCredential:
        try:
            return self._by_eid[eid]
        except KeyError:
            raise UnknownDevice(f"no device bound to EID {eid.hex()}") from None

    def __iter__(self) -> Iterator[DeviceCredential]:
        return iter(self._by_identity.values())

    def __len__(self) -> int:
        return len(self._by_identity)


def check_eid(bound_eid: bytes, uplink: Uplink) -> None:
    claimed = uplink_eid(uplink)
    if claimed is not None and claimed != bound_eid:
        raise AccessDenied(f"uplink claims EID {claimed.hex()}, link is bound to {bound_eid.hex()}")


async def answer(handler: UplinkHandler, bound_eid: bytes, payload: bytes) -> tuple[Downlink, bytes]:
    """Decode, authorise and hand one uplink to the handler; the downlink and its encoding."""
    downlink: Downlink
    try:
        uplink = decode_uplink(payload)
        check_eid(bound_eid, uplink)
        downlink = await handler.exchange(bound_eid, uplink)
    except DecodeError as exc:
        log.info("uplink from %s refused: %s", bound_eid.hex(), exc)
        downlink = error_reply(exc)
    except AccessDenied as exc:
        log.warning("uplink refused: %s", exc)
        downlink = ErrorMsg(int(ErrorCode.FORBIDDEN), str(exc))
    except UnknownDevice as exc:
        downlink = ErrorMsg(int(ErrorCode.UNKNOWN_DEVICE), str(exc))
    except GatewayError as exc:
        log.exception("handler failed for %s", bound_eid.hex())
        downlink = ErrorMsg(int(ErrorCode.INTERNAL), type(exc).__name__)
    except Exception:  # a bug in the handler: the device still gets its one downlink
        log.exception("handler crashed for %s", bound_eid.hex())
        downlink = ErrorMsg(int(ErrorCode.INTERNAL), "internal error")
    return downlink, encode_downlink(downlink)
