"""ES11 (LPA/IPA <-> SM-DS) JSON bodies for event retrieval, SGP.22 v2.5 §6.6; pure, no I/O.

Theory of operation. ES11 reuses the ES9+ conventions (`gateway.spec.es9p`: header,
base64 binary fields, hex transactionId, the same reason-code retry table). Event
retrieval is a mutual authentication: initiateAuthentication (§6.6.2.1) returns the
SM-DS's signed serverSigned1, the eUICC answers AuthenticateServer, and
authenticateClient (§6.6.2.2) returns the pending events for the EID, each an eventId
(the matchingId to present to the SM-DP+) and the rspServerAddress of that SM-DP+.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.errors import DecodeError
from gateway.spec.es9p import AuthenticateClientRequest as AuthenticateClientRequest  # §6.6.2.2 = §6.5.2.8
from gateway.spec.es9p import InitiateAuthenticationResponse as _Es9pInitiateAuthenticationResponse
from gateway.spec.es9p import (
    SUCCESS_HEADER,
    ResponseHeader,
    b64,
    json_b64,
    json_dump,
    json_load,
    json_str,
    json_transaction_id,
    parse_header,
    transaction_id_hex,
)

ES11_PATH_PREFIX: Final = "/gsma/rsp2/es11/"
INITIATE_AUTHENTICATION: Final = "initiateAuthentication"  # §6.6.2.1
AUTHENTICATE_CLIENT: Final = "authenticateClient"          # §6.6.2.2


def es11_path(function: str) -> str:
    return ES11_PATH_PREFIX + function


@dataclass(frozen=True, slots=True)
class InitiateAuthenticationRequest:  # §6.6.2.1
    euicc_challenge: bytes
    euicc_info1: bytes
    smds_address: str

    def to_json(self) -> bytes:
        return json_dump({"euiccChallenge": b64(self.euicc_challenge),
                          "euiccInfo1": b64(self.euicc_info1),
                          "smdsAddress": self.smds_address})

    @classmethod
    def from_json(cls, body: bytes) -> InitiateAuthenticationRequest:
        f = "es11." + INITIATE_AUTHENTICATION
        obj = json_load(body, f)
        return cls(json_b64(obj, "euiccChallenge", f), json_b64(obj, "euiccInfo1", f),
                   json_str(obj, "smdsAddress", f))


@dataclass(frozen=True, slots=True)
class InitiateAuthenticationResponse:  # §6.6.2.1: same fields as ES9+ §6.5.2.6
    transaction_id: bytes
    server_signed1: bytes
    server_signature1: bytes
    euicc_ci_pkid_to_be_used: bytes
    server_certificate: bytes
    header: ResponseHeader = SUCCESS_HEADER

    @classmethod
    def from_json(cls, body: bytes) -> InitiateAuthenticationResponse:
        f = "es11." + INITIATE_AUTHENTICATION
        r = _Es9pInitiateAuthenticationResponse.from_obj(json_load(body, f), f)
        return cls(r.transaction_id, r.server_signed1, r.server_signature1,
                   r.euicc_ci_pkid_to_be_used, r.server_certificate, r.header)

    def to_json(self) -> bytes:
        return _Es9pInitiateAuthenticationResponse(
            self.transaction_id, self.server_signed1, self.server_signature1,
            self.euicc_ci_pkid_to_be_used, self.server_certificate, self.header).to_json()


@dataclass(frozen=True, slots=True)
class EventEntry:
    event_id: str            # presented to the SM-DP+ as matchingId
    rsp_server_address: str  # FQDN of the SM-DP+ holding the event

    def to_obj(self) -> dict[str, str]:
        return {"eventId": self.event_id, "rspServerAddress": self.rsp_server_address}


@dataclass(frozen=True, slots=True)
class AuthenticateClientResponse:  # §6.6.2.2
    event_entries: tuple[EventEntry, ...]
    transaction_id: bytes | None = None
    header: ResponseHeader = SUCCESS_HEADER

    @classmethod
    def from_json(cls, body: bytes) -> AuthenticateClientResponse:
        f = "es11." + AUTHENTICATE_CLIENT
        obj = json_load(body, f)
        header = parse_header(obj, f)
        raw = obj.get("eventEntries", [])
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise DecodeError("field 'eventEntries' is not an array", type_name=f)
        entries = tuple(_event_entry(item, f) for item in raw)
        tid = json_transaction_id(obj, "transactionId", f) if obj.get("transactionId") is not None else None
        return cls(entries, tid, header)

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {"header": self.header.to_obj(),
                               "eventEntries": [e.to_obj() for e in self.event_entries]}
        if self.transaction_id is not None:
            obj["transactionId"] = transaction_id_hex(self.transaction_id)
        return json_dump(obj)


def _event_entry(item: object, f: str) -> EventEntry:
    if not isinstance(item, Mapping):
        raise DecodeError("an eventEntries item is not an object", type_name=f)
    return EventEntry(json_str(item, "eventId", f), json_str(item, "rspServerAddress", f))
