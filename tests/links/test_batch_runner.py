"""gateway.links.batch_runner on its own: the one batch runner of the agent and of the gateway's serial device."""

from __future__ import annotations

from collections.abc import Iterator

from gateway.errors import CardError
from gateway.links import protocol as p
from gateway.links.batch_runner import BatchRunner
from gateway.links.memory import MemoryLink
from gateway.links.protocol import batch_header
from gateway.spec.apdu import ISD_R_AID, manage_channel_open, select
from hil.agent import Agent
from hil.agent.memory_transport import MemoryAgentTransport
from hil.euicc.card import ApduLayer
from tests.links.conftest import ScriptedHandler, eid_of, es10_steps

EID = eid_of(2)


class AsyncCard:
    """The software eUICC's APDU layer behind an async transmit (as AsyncModemEuicc is)."""

    def __init__(self) -> None:
        self.card = ApduLayer(lambda request: request)
        self.commands: list[bytes] = []
        self.refreshes: list[str] = []
        self.refresh_fails = False

    async def transmit(self, apdu: bytes) -> bytes:
        self.commands.append(apdu)
        return self.card.transmit(apdu)

    async def refresh(self, kind: str) -> None:
        self.refreshes.append(kind)
        if self.refresh_fails:
            raise CardError("modem did not come back", sw=0x6F00)


class CardChannels:
    """A ChannelControl that opens the channel as a modem's AT+CCHO does: one call, AID selected."""

    def __init__(self, card: AsyncCard) -> None:
        self.card = card
        self.opened: list[int] = []
        self.closed: list[int] = []

    async def open_channel(self, aid: bytes) -> int:
        channel = (await self.card.transmit(manage_channel_open()))[0]
        await self.card.transmit(bytes((channel,)) + select(aid)[1:])
        self.opened.append(channel)
        return channel

    async def close_channel(self, channel: int) -> None:
        self.closed.append(channel)
        await self.card.transmit(bytes.fromhex(f"007080{channel:02X}"))


async def test_a_whole_batch_runs_on_an_async_backend_and_closes_its_channel() -> None:
    card = AsyncCard()
    batch = p.Batch(1, es10_steps(3), aid=ISD_R_AID, refresh=p.REFRESH_UICC_RESET)
    runner = BatchRunner(card, batch_header(batch))
    result = await runner.run(batch.steps)
    assert result.batch_id == 1 and result.stopped is None and len(result.results) == 3
    assert all(r.sw == 0x9000 and r.data for r in result.results)
    assert card.card.open_channels() == [0] and card.refreshes == [p.REFRESH_UICC_RESET]
    assert runner.apdus_sent == 3 and not runner.refresh_failed


async def test_a_channel_control_opens_and_closes_the_channel_instead_of_manage_channel() -> None:
    card = AsyncCard()
    channels = CardChannels(card)
    batch = p.Batch(2, es10_steps(2), aid=ISD_R_AID)
    result = await BatchRunner(card, batch_header(batch), channels=channels).run(batch.steps)
    assert len(result.results) == 2 and result.stopped is None
    assert channels.opened == channels.closed == [1]
    store_data = [c for c in card.commands if c[1] == 0xE2]
    assert store_data and all(c[0] == 0x81 for c in store_data)  # the control's channel in the CLA
    assert card.card.open_channels() == [0]


async def test_a_channel_control_that_fails_is_a_card_error_with_no_step_run() -> None:
    class Refusing(CardChannels):
        async def open_channel(self, aid: bytes) -> int:
            raise CardError("AT+CCHO refused", sw=0x6A82)

    card = AsyncCard()
    batch = p.Batch(3, es10_steps(2), aid=ISD_R_AID)
    result = await BatchRunner(card, batch_header(batch), channels=Refusing(card)).run(batch.steps)
    assert result.stopped == p.STOPPED_CARD and result.results == () and card.commands == []


async def test_run_stops_reading_steps_once_a_stop_rule_fires() -> None:
    pulled: list[int] = []

    def steps() -> Iterator[p.Step]:
        for i, step in enumerate(es10_steps(3)):
            pulled.append(i)
            yield p.Step(step.apdus, continue_sw=(0x6F00,)) if i == 0 else step

    card = AsyncCard()
    result = await BatchRunner(card, p.BatchHeader(4, 3, ISD_R_AID)).run(steps())
    assert result.stopped == p.STOPPED_SW and len(result.results) == 1 and pulled == [0]
    assert card.card.open_channels() == [0]


async def test_a_backend_answering_no_bytes_is_a_card_error_not_a_crash() -> None:
    class Broken:
        def transmit(self, apdu: bytes) -> object:
            return None

    batch = p.Batch(5, es10_steps(1))
    result = await BatchRunner(Broken(), batch_header(batch)).run(batch.steps)  # type: ignore[arg-type]
    assert result.stopped == p.STOPPED_CARD and result.results == ()


async def test_a_failed_refresh_keeps_the_result_and_counts_as_an_attach_failure() -> None:
    card = AsyncCard()
    card.refresh_fails = True
    handler = ScriptedHandler(batches={EID: [p.Batch(6, es10_steps(1), aid=ISD_R_AID, refresh=p.REFRESH_MODEM_RESET)]})
    agent = Agent(Agent.make_status(EID), card, MemoryAgentTransport(MemoryLink(handler), EID))
    report = await agent.run_session()
    assert report.transport_error is None and report.idle_after_s == handler.idle_s
    [result] = handler.results_for(EID)
    assert result.stopped is None and len(result.results) == 1 and card.refreshes == [p.REFRESH_MODEM_RESET]
    assert agent.status.attach_failures == 1
