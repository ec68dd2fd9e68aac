from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import LocalProtocolError, UnknownDevice
from gateway.store import LinkIdentityTaken, Store

EID_A = bytes.fromhex("89049032123451234512345678901235")
EID_B = bytes.fromhex("89049032123451234512345678901236")


def test_register_is_idempotent_on_the_same_link(store: Store) -> None:
    first = store.devices.register(EID_A, "coap", "psk-a", now=10.0, group="site-1", tags=["meter", "b"])
    again = store.devices.register(EID_A, "coap", "psk-a", now=20.0)
    assert again == first
    assert first.tags == ("b", "meter") and first.group == "site-1" and first.created_at == 10.0


def test_link_identity_maps_to_exactly_one_eid(store: Store) -> None:
    store.devices.register(EID_A, "mqtt", "user-a", now=1.0)
    with pytest.raises(LinkIdentityTaken):
        store.devices.register(EID_B, "mqtt", "user-a", now=2.0)
    with pytest.raises(LinkIdentityTaken):
        store.devices.register(EID_A, "mqtt", "user-other", now=2.0)
    store.devices.register(EID_B, "coap", "user-a", now=2.0)  # same name on another link kind is another identity
    found = store.devices.by_link("mqtt", "user-a")
    assert found is not None and found.eid == EID_A
    assert store.devices.by_link("mqtt", "nobody") is None


def test_rebind_moves_a_device_and_refuses_a_taken_identity(store: Store) -> None:
    store.devices.register(EID_A, "mqtt", "a", now=1.0)
    store.devices.register(EID_B, "mqtt", "b", now=1.0)
    with pytest.raises(LinkIdentityTaken):
        store.devices.rebind(EID_A, "mqtt", "b", now=2.0)
    store.devices.rebind(EID_A, "serial", "/dev/ttyUSB0", now=3.0)
    assert store.devices.require(EID_A).link_identity == "/dev/ttyUSB0"


def test_imei_quarantine_eim_config_status_and_tags_survive_reopen(db_path: Path) -> None:
    with Store.open(db_path) as s:
        s.devices.register(EID_A, "coap", "psk-a", now=1.0)
        s.devices.bind_imei(EID_A, "356938035643809", now=2.0)
        s.devices.set_quarantine(EID_A, True, reason="IMEI changed", now=3.0)
        s.devices.set_eim_config(EID_A, bytes.fromhex("bf5503a00180"), now=4.0)
        s.devices.record_contact(EID_A, now=5.0, status={"plmn": "00101", "signal_dbm": -97})
        s.devices.set_group(EID_A, "site-9", ["lamp"], now=6.0)
    with Store.open(db_path) as s:
        d = s.devices.require(EID_A)
    assert d.imei == "356938035643809"
    assert d.quarantined and d.quarantine_reason == "IMEI changed"
    assert d.eim_config == bytes.fromhex("bf5503a00180")
    assert d.last_contact == 5.0 and d.last_status == {"plmn": "00101", "signal_dbm": -97}
    assert (d.group, d.tags, d.updated_at) == ("site-9", ("lamp",), 6.0)


def test_list_filters_by_group_and_tag(store: Store) -> None:
    store.devices.register(EID_A, "coap", "a", now=1.0, group="g1", tags=["x"])
    store.devices.register(EID_B, "coap", "b", now=1.0, group="g2", tags=["x", "y"])
    assert [d.eid for d in store.devices.list(tag="x")] == [EID_A, EID_B]
    assert [d.eid for d in store.devices.list(tag="y")] == [EID_B]
    assert [d.eid for d in store.devices.list(group="g1")] == [EID_A]


def test_updates_to_an_unknown_device_and_bad_status_are_clear_errors(store: Store) -> None:
    with pytest.raises(UnknownDevice):
        store.devices.record_contact(EID_A, now=1.0)
    with pytest.raises(UnknownDevice):
        store.devices.require(EID_A)
    store.devices.register(EID_A, "coap", "a", now=1.0)
    with pytest.raises(LocalProtocolError):
        store.devices.record_contact(EID_A, now=2.0, status={"raw": b"\x01"})
    assert store.devices.require(EID_A).last_contact is None


def test_stats_count_what_is_stored(store: Store) -> None:
    store.devices.register(EID_A, "coap", "a", now=1.0)
    store.inbox.enqueue(EID_A, "k", "p", b"x", origin=None, now=1.0)
    store.outbox.enqueue("eim", "r", "r", b"xyz", now=1.0)
    store.audit.append(time=1.0, operation="op", result="ok")
    stats = store.stats()
    assert {k: v for k, v in stats.items() if k != "db_bytes"} == {
        "devices": 1, "inbox_open": 1, "sessions": 0, "audit_last_id": 1, "outbox_pending": 1,
        "outbox_pending_bytes": 3, "deliveries_waiting": 0}
    assert stats["db_bytes"] > 0
