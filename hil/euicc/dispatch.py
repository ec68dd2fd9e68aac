"""Registry of ES10 function handlers by request tag, and the ES10 errors they raise.

A handler is `handler(euicc, request: bytes, value) -> bytes`: `request` is the exact DER
received (for signatures over sub-structures), `value` the decoded request (asn1tools
conventions), the return value the DER response. Handlers raise `StatusWord` for requests a
card refuses at the APDU level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hil.euicc.euicc import SoftEuicc

Handler = Callable[["SoftEuicc", bytes, Any], bytes]


@dataclass(frozen=True)
class Function:
    name: str            # spec name, e.g. "GetEuiccChallenge"
    request_type: str    # ASN.1 type of the request
    handler: Handler


FUNCTIONS: dict[int, Function] = {}


def es10(tag: int, name: str, request_type: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        FUNCTIONS[tag] = Function(name, request_type, handler)
        return handler
    return register
