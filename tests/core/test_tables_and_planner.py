"""Pure tests: the procedures' transition tables, the exchange planner, small spec helpers."""

from __future__ import annotations

import pytest

from gateway.core import es10
from gateway.core.planner import BATCH_OVERHEAD, Part, plan, step_size
from gateway.core.procedures import notifications as N
from gateway.core.procedures.base import DONE, ERROR, INITIAL, START, Call, Procedure
from gateway.core.procedures.discovery import Discovery
from gateway.core.procedures.download import Download, parse_activation_code
from gateway.core.procedures.eim_data import EimData, split_tag_list
from gateway.core.procedures.eim_package import EimPackage
from gateway.core.packages import package_key, plmn_bytes
from gateway.errors import DecodeError, LocalProtocolError
from gateway.spec.apdu import ISD_R_AID
from hil.pki import RspPki

PROCEDURES: list[type[Procedure]] = [Download, EimPackage, EimData, Discovery]

# The state names are stored in SQLite: renaming one breaks resuming a saved session.
STABLE_STATES = {
    "download": {"INITIAL", "CHALLENGE", "INITIATING", "AUTHENTICATING", "AUTHENTICATING_CLIENT",
                 "PREPARING", "FETCHING", "LOADING", "CANCELLING", "CANCEL_RELAY", "RECOVERING", "EVENT_RETRIEVAL",
                 "DONE", "ERROR"},
    "eim_package": {"INITIAL", "LOADING", "RECOVERING", "DONE", "ERROR"},
    "eim_data": {"INITIAL", "COLLECTING", "DONE", "ERROR"},
    "discovery": {"INITIAL", "READING", "ADDING", "DONE", "ERROR"},
}


@pytest.mark.parametrize("proc", PROCEDURES, ids=lambda p: p.KIND)
def test_state_names_are_the_stable_stored_ones(proc: type[Procedure]) -> None:
    assert proc.states() == STABLE_STATES[proc.KIND]


@pytest.mark.parametrize("proc", PROCEDURES, ids=lambda p: p.KIND)
def test_every_state_is_reachable_and_every_live_state_has_a_way_out(proc: type[Procedure]) -> None:
    reachable = {INITIAL}
    frontier = [INITIAL]
    while frontier:
        state = frontier.pop()
        for (src, _), t in proc.TABLE.items():
            if src == state:
                for target in t.targets - reachable:
                    reachable.add(target)
                    frontier.append(target)
    live = proc.states() - proc.LEGACY
    assert reachable == live - {ERROR} or reachable == live
    assert not reachable & proc.LEGACY
    for state in proc.states() - {DONE, ERROR}:
        assert any(src == state for src, _ in proc.TABLE), state
    assert all(ERROR in t.targets for t in proc.TABLE.values())
    for (_, _), t in proc.TABLE.items():
        assert callable(getattr(proc, t.handler))


def test_an_input_outside_the_table_moves_to_error_with_a_finish() -> None:
    proc = EimData()
    from gateway.core.engine import EngineConfig
    from gateway.core.procedures.base import Env, Finish
    outputs = proc.feed(Env(bytes(16), 0.0, EngineConfig()), "answer", None)
    assert proc.state == ERROR
    assert any(isinstance(o, Finish) and o.outcome == "failed" for o in outputs)


def test_a_malformed_package_fails_the_procedure_instead_of_raising() -> None:
    from gateway.core.engine import EngineConfig
    from gateway.core.procedures.base import Env, Finish
    proc = EimPackage(ctx={"request": b"\xbf\x51\x03\x01\x02\x03", "eim_id": "e"})
    outputs = proc.feed(Env(bytes(16), 0.0, EngineConfig()), START)
    assert proc.state == ERROR and isinstance(outputs[-1], Finish)


def test_delivery_table_refuses_removal_before_acknowledgement() -> None:
    item = {"key": "n1", "state": N.SENDING}
    with pytest.raises(LocalProtocolError):
        N.move(item, "remove", N.REMOVING)
    N.move(item, "ack", N.ACKED)
    N.move(item, "remove", N.REMOVING)
    N.move(item, "removed", N.DONE)
    assert {s for (s, _) in N.TABLE} | {t for ts in N.TABLE.values() for t in ts} == N.STATES


def _call(n: int, size: int = 100, segment: bool = False) -> Call:
    from gateway.spec import tlv
    return Call(f"c{n}", tlv.header(0x04, size) + bytes(size), segment)


def test_plan_folds_parts_in_order_into_one_batch_on_the_isd_r() -> None:
    planned = plan([Part("proc", (_call(1), _call(2)), "uicc-reset"), Part("notif", (_call(3),))], 7)
    assert planned.batch.batch_id == 7 and planned.batch.aid == ISD_R_AID
    assert [o for o in planned.owners] == [("proc", 2), ("notif", 1)]
    assert planned.batch.refresh == "uicc-reset" and planned.leftover == ()


def test_plan_cuts_the_first_part_at_the_byte_budget_and_keeps_the_refresh_for_its_end() -> None:
    calls = tuple(_call(i, 200, segment=True) for i in range(10))
    one = step_size(plan([Part("proc", calls[:1])], 1).batch.steps[0])
    budget = BATCH_OVERHEAD + 3 * one
    planned = plan([Part("proc", calls, "modem-reset"), Part("notif", (_call(99),))], 1, max_batch_bytes=budget)
    assert planned.owners == (("proc", 3),)
    assert planned.batch.refresh is None
    assert [p.owner for p in planned.leftover] == ["proc", "notif"]
    assert len(planned.leftover[0].calls) == 7
    assert all(s.stop_if_data for s in planned.batch.steps)


def test_a_call_that_cannot_fit_the_device_is_named_and_never_planned() -> None:
    from gateway.core.planner import oversize
    big = _call(1, 1500)       # 6 STORE DATA blocks: a ~1.5 KB step item
    why = oversize(big, buffer_size=1024)
    assert why is not None and "c1" in why and "buffers 1024 bytes" in why
    assert oversize(big, buffer_size=4096) is None
    why = oversize(big, max_batch_bytes=1000)
    assert why is not None and "accepts 1000 bytes" in why
    with pytest.raises(LocalProtocolError):
        plan([Part("proc", (big,))], 1, buffer_size=1024)
    with pytest.raises(LocalProtocolError):
        plan([Part("proc", (big,))], 1, max_batch_bytes=1000)


def test_plan_splits_a_call_into_store_data_blocks_of_the_segment_size() -> None:
    planned = plan([Part("proc", (Call("x", b"\x04\x82\x01\x00" + bytes(256)),))], 1, segment_size=120)
    apdus = planned.batch.steps[0].apdus
    assert len(apdus) == 3 and apdus[0][2] == 0x11 and apdus[-1][2] == 0x91


def test_activation_codes() -> None:
    assert parse_activation_code("1$smdp.example$ABC-1") == ("smdp.example", "ABC-1")
    assert parse_activation_code("LPA:1$smdp.example$$1.2.3") == ("smdp.example", None)
    for bad in ("", "2$x$y", "1$$m", "nonsense"):
        with pytest.raises(DecodeError):
            parse_activation_code(bad)


def test_rplmn_is_encoded_as_in_ts_24_008() -> None:
    assert plmn_bytes("26201") == bytes.fromhex("62F210")
    assert plmn_bytes("310410") == bytes.fromhex("130014")
    assert plmn_bytes("abc") is None


def test_package_key_uses_the_transaction_id_else_a_hash_of_the_exact_bytes() -> None:
    from gateway.spec import codec
    trigger = codec.encode("ProfileDownloadTriggerRequest", {"eimTransactionId": b"\x01\x02"})
    from gateway.store import inbox
    assert package_key("eim", trigger) == inbox.transaction_key("eim", b"\x01\x02") == "eim:eim/tx:0102"
    bare = codec.encode("ProfileDownloadTriggerRequest", {})
    assert package_key("eim", bare) == inbox.package_key(bare)
    assert package_key("eim", b"\xff") != package_key("eim", b"\xfe")


def test_tag_lists_with_multi_byte_tags() -> None:
    assert split_tag_list(bytes.fromhex("BF20A9BF2281")) == [0xBF20, 0xA9, 0xBF22, 0x81]


def test_cancel_session_request_encodes_the_reason() -> None:
    raw = es10.cancel_session(b"\x01" * 16, "loadBppExecutionError")
    from gateway.spec import codec
    assert codec.decode("CancelSessionRequest", raw)["reason"] == 5


def test_plan_never_exceeds_the_device_link_limits() -> None:
    from gateway.links.protocol import MAX_MESSAGE, MAX_STEPS, encode_downlink, BatchMsg
    calls = tuple(_call(i, 100, segment=True) for i in range(MAX_STEPS + 10))
    planned = plan([Part("proc", calls)], 1)
    assert len(planned.batch.steps) <= MAX_STEPS and planned.leftover
    assert len(encode_downlink(BatchMsg(planned.batch))) <= MAX_MESSAGE
    big = tuple(Call(f"b{i}", b"\x04\x82\x3b\xc0" + bytes(0x3BC0)) for i in range(200))   # 60 blocks each
    planned = plan([Part("proc", big)], 2)
    assert len(encode_downlink(BatchMsg(planned.batch))) <= MAX_MESSAGE


def test_an_unreadable_notification_does_not_hide_the_others(pki: RspPki) -> None:
    from gateway.spec import codec, signed

    def note(seq: int) -> bytes:
        tbs = {"seqNumber": seq, "profileManagementOperation": (b"\x40", 4),
               "notificationAddress": "smdp.example", "iccid": bytes.fromhex("98001032547698103214")}
        return codec.encode("OtherSignedNotification", {
            "tbsOtherNotification": tbs, "euiccNotificationSignature": bytes(64),
            "euiccCertificate": pki.euicc.cert_der, "eumCertificate": pki.eum.cert_der})

    data = signed.wrap(0xBF2B, signed.wrap(0xA0, note(5), b"\x30\x03\x02\x01\x00", note(6)))
    found = es10.retrieved_list(data)
    assert [(n.seq_number, n.event, n.address) for n in found.notifications] == [
        (5, "enable", "smdp.example"), (6, "enable", "smdp.example")]
    assert found.unreadable == [b"\x30\x03\x02\x01\x00"]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(3, 600), min_size=1, max_size=30), st.lists(st.integers(3, 300), max_size=5),
       st.one_of(st.none(), st.integers(50, 5000)), st.integers(16, 255),
       st.one_of(st.none(), st.integers(256, 2048)))
def test_plan_keeps_every_call_in_order_within_budget(sizes: list[int], extra: list[int], budget: int | None,
                                                      segment: int, buffer: int | None) -> None:
    from dataclasses import replace

    from gateway.core.planner import oversize, step_item_size
    from gateway.links.protocol import MAX_MESSAGE, BatchMsg, encode_downlink

    def fitting(calls: list[Call]) -> tuple[Call, ...]:     # what the session lets through
        return tuple(c for c in calls if oversize(c, segment_size=segment, buffer_size=buffer,
                                                  max_batch_bytes=budget) is None)
    proc = Part("proc", fitting([_call(i, n, segment=True) for i, n in enumerate(sizes)]), "uicc-reset")
    notif = Part("notif", fitting([_call(100 + i, n) for i, n in enumerate(extra)]))
    sizes = [n for i, n in enumerate(sizes) if f"c{i}" in {c.name for c in proc.calls}]
    extra = [n for i, n in enumerate(extra) if f"c{100 + i}" in {c.name for c in notif.calls}]
    parts = [p for p in (proc, notif) if p.calls]
    sent: list[str] = []
    batches = 0
    while parts:
        planned = plan(parts, batches, segment_size=segment, max_batch_bytes=budget, buffer_size=buffer)
        batches += 1
        steps = planned.batch.steps
        assert steps, "a batch always carries a call"
        # the exact wire size, even with the largest next_size_hint added after planning
        hinted = replace(planned.batch, next_size_hint=MAX_MESSAGE)
        assert len(encode_downlink(BatchMsg(hinted))) <= (budget if budget is not None else MAX_MESSAGE)
        assert buffer is None or all(step_item_size(s) <= buffer for s in steps)
        for owner, count in planned.owners:
            part = next(p for p in parts if p.owner == owner)
            sent += [c.name for c in part.calls[:count]]
        last_proc_sent = not any(p.owner == "proc" for p in planned.leftover) and any(
            o == "proc" for o, _ in planned.owners)
        assert (planned.batch.refresh == "uicc-reset") == last_proc_sent
        parts = list(planned.leftover)
        assert batches <= len(sizes) + len(extra)
    assert sorted(sent) == sorted(c.name for p in (proc, notif) for c in p.calls)
    assert [n for n in sent if int(n[1:]) < 100] == [c.name for c in proc.calls]
