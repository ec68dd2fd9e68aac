"""The reference agent's batch semantics over the in-memory link, on the software eUICC's APDU layer."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.links import protocol as p
from gateway.links.memory import MemoryLink
from gateway.spec.apdu import ISD_R_AID, store_data
from hil.agent import Agent
from hil.agent.memory_transport import MemoryAgentTransport
from hil.euicc.card import ApduLayer, StatusWord
from tests.links.conftest import ScriptedHandler, echo_card, eid_of, es10_steps

EID = eid_of(1)


def der(tag: bytes, body: bytes) -> bytes:
    return tag + bytes((len(body),)) + body


def agent_on(handler: ScriptedHandler, card: object, *, buffer_size: int = 4096) -> tuple[Agent, MemoryLink]:
    link = MemoryLink(handler)
    return Agent(Agent.make_status(EID, buffer_size=buffer_size), card,  # type: ignore[arg-type]
                 MemoryAgentTransport(link, EID)), link


class RecordingCard:
    """Wraps the soft eUICC APDU layer and records every command it receives."""

    def __init__(self, es10: Callable[[bytes], bytes]) -> None:
        self.card = ApduLayer(es10)
        self.commands: list[bytes] = []
        self.refreshes: list[str] = []

    def transmit(self, apdu: bytes) -> bytes:
        self.commands.append(apdu)
        return self.card.transmit(apdu)

    def refresh(self, kind: str) -> None:
        self.refreshes.append(kind)
        self.card.reset()


async def test_memory_link_counts_round_trips_bytes_and_apdus() -> None:
    handler = ScriptedHandler(batches={EID: [p.Batch(1, es10_steps(3), aid=ISD_R_AID),
                                             p.Batch(2, es10_steps(2), aid=ISD_R_AID)]})
    agent, link = agent_on(handler, echo_card())
    report = await agent.run_session()
    assert report.exchanges == 3 == link.totals.exchanges  # Hello, Result 1, Result 2 -> Idle
    assert link.totals.apdus == 5 and link.totals.batches == 2
    assert link.totals.downlink_bytes == report.downlink_bytes
    assert link.totals.uplink_bytes == report.uplink_bytes
    assert link.counters(EID).exchanges == 3


async def test_agent_opens_a_channel_sets_cla_bits_and_closes_it() -> None:
    card = RecordingCard(lambda req: req)
    handler = ScriptedHandler(batches={EID: [p.Batch(1, es10_steps(1), aid=ISD_R_AID)]})
    agent, _ = agent_on(handler, card)
    await agent.run_session()
    assert card.commands[0][:4] == bytes.fromhex("00700000")  # MANAGE CHANNEL open
    assert card.commands[1][:4] == bytes.fromhex("01A40400")  # SELECT on channel 1
    assert card.commands[2][:2] == bytes.fromhex("81E2")  # STORE DATA with channel bits
    assert any(c[:2] == bytes.fromhex("01C0") for c in card.commands)  # GET RESPONSE on channel 1
    assert card.commands[-1][:4] == bytes.fromhex("00708001")  # MANAGE CHANNEL close 1
    assert card.card.open_channels() == [0]


async def test_step_with_an_unexpected_sw_stops_the_batch() -> None:
    def es10(req: bytes) -> bytes:
        if req[:2] == b"\xbf\x22":
            raise StatusWord(0x6A88)
        return req
    steps = (p.Step(tuple(store_data(der(b"\xbf\x2e", b"")))), p.Step(tuple(store_data(der(b"\xbf\x22", b"")))),
             p.Step(tuple(store_data(der(b"\xbf\x20", b"")))))
    handler = ScriptedHandler(batches={EID: [p.Batch(1, steps, aid=ISD_R_AID)]})
    agent, _ = agent_on(handler, RecordingCard(es10))
    (result,) = (await agent.run_session()).results
    assert result.stopped == p.STOPPED_SW
    assert [r.sw for r in result.results] == [0x9000, 0x6A88]


async def test_a_listed_continue_sw_lets_the_batch_go_on() -> None:
    def es10(req: bytes) -> bytes:
        raise StatusWord(0x6A88)
    steps = (p.Step(tuple(store_data(der(b"\xbf\x2e", b""))), continue_sw=(0x9000, 0x6A88)),) * 2
    handler = ScriptedHandler(batches={EID: [p.Batch(1, steps, aid=ISD_R_AID)]})
    agent, _ = agent_on(handler, RecordingCard(es10))
    (result,) = (await agent.run_session()).results
    assert result.stopped is None and [r.sw for r in result.results] == [0x6A88, 0x6A88]


async def test_bpp_segment_answering_with_data_stops_the_batch_there() -> None:
    calls: list[bytes] = []

    def es10(req: bytes) -> bytes:
        calls.append(req)
        return der(b"\xbf\x37", b"\x80\x01\x02") if len(calls) == 2 else b""
    segment = p.Step(tuple(store_data(der(b"\xa3", bytes(50)))), stop_if_data=True)
    handler = ScriptedHandler(batches={EID: [p.Batch(1, (segment,) * 5, aid=ISD_R_AID)]})
    agent, _ = agent_on(handler, RecordingCard(es10))
    (result,) = (await agent.run_session()).results
    assert result.stopped == p.STOPPED_DATA and len(result.results) == 2 and len(calls) == 2
    assert result.results[1].data.startswith(b"\xbf\x37")


async def test_intermediate_store_data_block_refused_ends_the_step_early() -> None:
    def es10(req: bytes) -> bytes:
        raise StatusWord(0x6A80)
    card = RecordingCard(es10)
    big = der(b"\xbf\x2e", bytes(250)[:120]) * 3  # two STORE DATA blocks; the card answers 6A80 at the last
    step = p.Step(tuple(store_data(big)) + (bytes.fromhex("80E29103") + b"\x01\x02\x03",))
    handler = ScriptedHandler(batches={EID: [p.Batch(1, (step,), aid=ISD_R_AID)]})
    agent, _ = agent_on(handler, card)
    (result,) = (await agent.run_session()).results
    assert result.stopped == p.STOPPED_SW and result.results[0].sw == 0x6A80
    assert not any(c.endswith(b"\x01\x02\x03") for c in card.commands)


async def test_6cxx_is_resent_with_the_le_the_card_asks_for() -> None:
    class SixC:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def transmit(self, apdu: bytes) -> bytes:
            self.sent.append(apdu)
            if apdu[-1] != 0x04:
                return b"\x6c\x04"
            return b"\xde\xad\xbe\xef\x90\x00"
    card = SixC()
    handler = ScriptedHandler(batches={EID: [p.Batch(1, (p.Step((bytes.fromhex("00CA005A00"),)),))]})
    agent, _ = agent_on(handler, card)
    (result,) = (await agent.run_session()).results
    assert result.results[0] == p.StepResult(b"\xde\xad\xbe\xef", 0x9000)
    assert card.sent == [bytes.fromhex("00CA005A00"), bytes.fromhex("00CA005A04")]


@pytest.mark.parametrize("kind", [p.REFRESH_UICC_RESET, p.REFRESH_MODEM_RESET])
async def test_refresh_is_passed_to_the_backend_after_the_steps(kind: str) -> None:
    card = RecordingCard(lambda req: req)
    handler = ScriptedHandler(batches={EID: [p.Batch(1, es10_steps(1), aid=ISD_R_AID, refresh=kind)]})
    agent, _ = agent_on(handler, card)
    await agent.run_session()
    assert card.refreshes == [kind]


async def test_select_refused_reports_card_error_without_running_steps() -> None:
    card = RecordingCard(lambda req: req)
    handler = ScriptedHandler(batches={EID: [p.Batch(1, es10_steps(2), aid=bytes.fromhex("A0000005591010FFFFFFFF89000001FF"))]})
    agent, _ = agent_on(handler, card)
    (result,) = (await agent.run_session()).results
    assert result.stopped == p.STOPPED_CARD and result.results == ()
    assert card.card.open_channels() == [0]


async def test_backend_failure_is_card_error_and_the_result_still_goes_up() -> None:
    class Dead:
        def transmit(self, apdu: bytes) -> bytes:
            raise OSError("modem gone")
    handler = ScriptedHandler(batches={EID: [p.Batch(1, (p.Step((bytes.fromhex("80E2910100"),)),))]})
    agent, _ = agent_on(handler, Dead())
    report = await agent.run_session()
    assert report.results[0].stopped == p.STOPPED_CARD
    assert handler.results_for(EID)[0].stopped == p.STOPPED_CARD


async def test_a_step_larger_than_the_agent_buffer_is_a_decode_error_not_a_crash() -> None:
    huge = p.Step(tuple(store_data(bytes(255 * 20))))
    handler = ScriptedHandler(batches={EID: [p.Batch(1, (huge,), aid=ISD_R_AID)]})
    agent, _ = agent_on(handler, echo_card(), buffer_size=4096)
    report = await agent.run_session()
    assert report.transport_error is not None and "buffer" in report.transport_error


async def test_error_msg_ends_the_session() -> None:
    class Refusing:
        async def exchange(self, eid: bytes, uplink: p.Uplink) -> p.Downlink:
            return p.ErrorMsg(int(p.ErrorCode.UNKNOWN_DEVICE), "who are you")
    agent, _ = agent_on(Refusing(), echo_card())  # type: ignore[arg-type]
    report = await agent.run_session()
    assert report.error == p.ErrorMsg(int(p.ErrorCode.UNKNOWN_DEVICE), "who are you")


async def test_memory_link_refuses_an_uplink_for_another_eid() -> None:
    handler = ScriptedHandler()
    link = MemoryLink(handler)
    reply = p.decode_downlink(await link.exchange(EID, p.encode_uplink(p.Hello(Agent.make_status(eid_of(2))))))
    assert isinstance(reply, p.ErrorMsg) and reply.code == p.ErrorCode.FORBIDDEN
    assert handler.uplinks == []


async def test_a_crashing_handler_still_answers_with_an_internal_error() -> None:
    class Broken:
        async def exchange(self, eid: bytes, uplink: p.Uplink) -> p.Downlink:
            raise ZeroDivisionError("bug")
    link = MemoryLink(Broken())  # type: ignore[arg-type]
    reply = p.decode_downlink(await link.exchange(EID, p.encode_uplink(p.Hello(Agent.make_status(EID)))))
    assert reply == p.ErrorMsg(int(p.ErrorCode.INTERNAL), "internal error")


async def test_a_downlink_broken_mid_batch_leaves_no_logical_channel_open() -> None:
    from gateway.errors import NetworkError

    class Breaking(MemoryAgentTransport):
        """Hands over the first chunk of the downlink, then the link drops."""

        async def exchange(self, payload: bytes, buffer_size: int, size_hint: int | None = None):  # type: ignore[no-untyped-def, override]
            async for i, chunk in _enumerate(super().exchange(payload, buffer_size, size_hint)):
                if i == 1:
                    raise NetworkError("link lost mid-downlink")
                yield chunk

    async def _enumerate(chunks):  # type: ignore[no-untyped-def]
        i = 0
        async for chunk in chunks:
            yield i, chunk
            i += 1

    card = RecordingCard(lambda req: req)
    handler = ScriptedHandler(batches={EID: [p.Batch(1, es10_steps(8), aid=ISD_R_AID)]})
    agent = Agent(Agent.make_status(EID), card, Breaking(MemoryLink(handler), EID, chunk_size=512))  # type: ignore[arg-type]
    report = await agent.run_session()
    assert report.transport_error is not None and "link lost" in report.transport_error
    assert any(c[:2] == bytes.fromhex("81E2") for c in card.commands)  # the batch had started on channel 1
    assert card.commands[-1][:4] == bytes.fromhex("00708001")  # and its channel was closed
    assert card.card.open_channels() == [0] and handler.results_for(EID) == []
