"""The one exception tree of the gateway.

Adapters translate library exceptions (aiohttp, aiocoap, paho, sqlite3, asn1tools) into these
classes at the edge, so the rest of the code decides what to do by class alone. Whether an
operation may be retried is a property of the class (`retryable`), read in one place:
`is_retryable()`.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    retryable: bool = False


class ConfigError(GatewayError):
    """Configuration that cannot be used; names the file and the key."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        where = ":".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


class ProtocolError(GatewayError):
    """A message that breaks the protocol (ours or a peer's)."""


class LocalProtocolError(ProtocolError):
    """We were about to send something invalid: a bug or a misuse of an API."""


class RemoteProtocolError(ProtocolError):
    """A peer (eUICC, device agent, eIM, SM-DP+) sent something invalid."""


class DecodeError(RemoteProtocolError):
    """Bytes (ASN.1, APDU, CBOR, JSON) that cannot be decoded as the expected type."""

    def __init__(self, message: str, *, type_name: str | None = None, offset: int | None = None) -> None:
        self.type_name = type_name
        self.offset = offset
        parts = []
        if type_name:
            parts.append(type_name)
        if offset is not None:
            parts.append(f"offset {offset}")
        prefix = " at ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class TransportError(GatewayError):
    """A link or backhaul failed to carry a message; the message may be resent."""

    retryable = True


class TransportTimeout(TransportError):
    """No answer within the allowed time."""


class NetworkError(TransportError):
    """Connection refused, reset, unreachable, TLS failure of the network kind."""


class TlsVerificationError(GatewayError):
    """A server's certificate did not verify: never retried blindly, never ignored."""


class CardError(GatewayError):
    """The eUICC answered a command with a status word other than success."""

    def __init__(self, message: str, *, sw: int) -> None:
        self.sw = sw
        super().__init__(f"{message} (SW {sw:04X})")


class FunctionFailed(GatewayError):
    """An ES9+, ES11 or ESipa function answered with an error status.

    subject_code / reason_code are the SGP.22 codes (for example 8.1.1 / 3.8); ESipa's ASN.1
    binding reports errors as enumerated values, carried in `reason_code` with subject ``None``.
    """

    def __init__(self, message: str, *, subject_code: str | None = None,
                 reason_code: str | None = None, retryable: bool = False) -> None:
        self.subject_code = subject_code
        self.reason_code = reason_code
        self.retryable = retryable
        codes = "/".join(c for c in (subject_code, reason_code) if c)
        super().__init__(f"{message} [{codes}]" if codes else message)


class DeviceError(GatewayError):
    """A device-level refusal: unknown device, quarantined device, EID not its own."""


class UnknownDevice(DeviceError):
    pass


class AccessDenied(DeviceError):
    """A device tried to act for an EID that is not bound to its identity."""


class StoreError(GatewayError):
    """SQLite could not persist or read; the daemon keeps running and retries."""

    retryable = True


def is_retryable(exc: BaseException) -> bool:
    """The single place that decides whether an operation that raised `exc` may be retried."""
    return isinstance(exc, GatewayError) and exc.retryable
