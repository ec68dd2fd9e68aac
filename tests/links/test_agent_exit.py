"""`python -m hil.agent` releases its eUICC backend (a modem's serial port) when it exits."""

from __future__ import annotations

from gateway.links import protocol as p
from gateway.links.coap import CoapServer
from gateway.spec.apdu import ISD_R_AID
from hil.agent.__main__ import build_parser, run
from hil.euicc.card import ApduLayer
from tests.links.conftest import ScriptedHandler, eid_of, es10_steps

CLOSED: list[str] = []


class ClosableCard:
    """An echo card whose close() is recorded, as a modem backend closes its port."""

    def __init__(self) -> None:
        self.card = ApduLayer(lambda request: request)

    def transmit(self, apdu: bytes) -> bytes:
        return self.card.transmit(apdu)

    def close(self) -> None:
        CLOSED.append("sync")


class AsyncClosableCard(ClosableCard):
    async def close(self) -> None:  # type: ignore[override]
        CLOSED.append("async")


def make_sync() -> ClosableCard:
    return ClosableCard()


def make_async() -> AsyncClosableCard:
    return AsyncClosableCard()


async def test_the_agent_closes_a_sync_and_an_async_backend_after_its_sessions(
        coap_server: CoapServer, handler: ScriptedHandler) -> None:
    CLOSED.clear()
    port = str(coap_server._config.dtls_port)
    for n, factory in ((4, "make_sync"), (5, "make_async")):
        handler.batches[eid_of(n)] = [p.Batch(n, es10_steps(1), aid=ISD_R_AID)]
        args = build_parser().parse_args(["--transport", "coap", "--port", port, "--eid", eid_of(n).hex(),
                                          "--identity", f"dev{n}", "--psk-hex", f"psk-of-device-{n}".encode().hex(),
                                          "--backend", f"{__name__}:{factory}"])
        assert await run(args) == 0
    assert CLOSED == ["sync", "async"]
    assert [r.batch_id for r in handler.results_for(eid_of(4)) + handler.results_for(eid_of(5))] == [4, 5]


async def test_the_backend_is_closed_even_when_the_session_fails(handler: ScriptedHandler) -> None:
    """Nothing listens on the port: the session ends with a transport error, the port is still released."""
    CLOSED.clear()
    from tests.links.conftest import free_udp_pair
    args = build_parser().parse_args(["--transport", "coap", "--plain", "--port", str(free_udp_pair()),
                                      "--eid", eid_of(1).hex(), "--backend", f"{__name__}:make_sync"])
    assert await run(args) == 1
    assert CLOSED == ["sync"]
