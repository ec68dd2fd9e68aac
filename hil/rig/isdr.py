"""The rig's own ES10b caller: one logical channel to the ISD-R, STORE DATA in, DER out.

Theory of operation. The probes talk to the card directly (the state-changing flows go through
the gateway's engine and the device agent instead). `IsdR` opens a logical channel with
MANAGE CHANNEL, SELECTs the ISD-R on it, and sends each ES10b request as STORE DATA blocks
(gateway.spec.apdu), chaining 61xx with GET RESPONSE and resending on 6Cxx
(`ResponseAssembler`); the response is checked and decoded with gateway.spec.es10b. The
channel is closed on exit, whatever happened, so a probe leaves the card as it found it.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import RemoteProtocolError
from gateway.spec import apdu as A
from gateway.spec import es10b
from hil.rig.backends import RigBackend


MAX_CHAINED = 400          # GET RESPONSE / resend follow-ups of one command (400 x 256 > any ES10 answer)


class IsdR:
    """`with IsdR(backend) as isdr: raw, value = isdr.call("GetEUICCInfo1", {})`."""

    def __init__(self, backend: RigBackend, *, aid: bytes = A.ISD_R_AID, segment_size: int = 255) -> None:
        self.backend = backend
        self.aid = aid
        self.segment_size = segment_size
        self.channel: int | None = None
        self.select_response = b""

    def __enter__(self) -> IsdR:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, command: bytes) -> tuple[bytes, int]:
        """One command APDU with 61xx/6Cxx chaining: (all data, final SW).

        The assembler stops a card that answers 61xx without data; a card that keeps sending
        data in small pieces is stopped here too, after MAX_CHAINED follow-ups.
        """
        assembler = A.ResponseAssembler(command)
        step = assembler.feed(self.backend.transmit(command))
        for _ in range(MAX_CHAINED):
            if not isinstance(step, A.SendNext):
                return step.data, step.sw
            step = assembler.feed(self.backend.transmit(step.apdu))
        raise RemoteProtocolError(f"the card still asks for GET RESPONSE after {MAX_CHAINED} follow-ups "
                                  f"of {command[:4].hex().upper()}")

    def open(self) -> None:
        data, sw = self.send(A.manage_channel_open())
        A.check_sw(sw)
        self.channel = A.opened_channel(data)
        try:
            self.select_response, sw = self.send(A.with_channel(A.select(self.aid), self.channel))
            A.check_sw(sw)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            self.send(A.manage_channel_close(channel))

    def raw(self, payload: bytes) -> bytes:
        """One ES10 request (its DER) on the channel: the response data; CardError on a bad SW."""
        if self.channel is None:
            raise RuntimeError("the ISD-R channel is not open")
        blocks = A.store_data(payload, self.segment_size, wrap_block_number=True)
        data, sw = b"", 0x9000
        for block in blocks:
            data, sw = self.send(A.with_channel(block, self.channel))
            A.check_sw(sw)
        return data

    def call(self, function: str, value: Any) -> tuple[bytes, Any]:
        """ES10b `function` (SGP.22/SGP.32 name): (response bytes as received, decoded value)."""
        raw = self.raw(es10b.encode_request(function, value))
        return raw, es10b.decode_response(function, raw)
