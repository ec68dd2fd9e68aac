from __future__ import annotations

from pathlib import Path

import pytest

from gateway.store import IdempotencyConflict, Store, package_key, transaction_key

EID = bytes.fromhex("89049032123451234512345678901235")
OTHER = bytes.fromhex("89049032123451234512345678901299")


def test_same_key_twice_is_one_entry_even_after_it_ran(store: Store) -> None:
    first = store.inbox.enqueue(EID, "eim1/tx01", "euiccPackage", b"\xbf\x51\x00", origin="eim1", now=1.0)
    again = store.inbox.enqueue(EID, "eim1/tx01", "euiccPackage", b"\xbf\x51\x00", origin="eim1", now=2.0)
    assert first.new and not again.new and again.id == first.id
    store.inbox.start(first.id, now=3.0)
    store.inbox.finish(first.id, now=4.0)
    replay = store.inbox.enqueue(EID, "eim1/tx01", "euiccPackage", b"\xbf\x51\x00", origin="eim1", now=5.0)
    assert (replay.new, replay.state) == (False, "done")
    assert store.inbox.pending(EID) == []


def test_same_key_with_other_bytes_is_refused(store: Store) -> None:
    store.inbox.enqueue(EID, "k", "euiccPackage", b"one", origin=None, now=1.0)
    with pytest.raises(IdempotencyConflict):
        store.inbox.enqueue(EID, "k", "euiccPackage", b"two", origin=None, now=2.0)


def test_keys_are_per_eid_and_package_key_hashes_bytes(store: Store) -> None:
    key = package_key(b"pkg")
    assert key == package_key(b"pkg") != package_key(b"pkh")
    assert store.inbox.enqueue(EID, key, "k", b"pkg", origin=None, now=1.0).new
    assert store.inbox.enqueue(OTHER, key, "k", b"pkg", origin=None, now=1.0).new
    assert store.inbox.eids_with_work() == sorted([EID, OTHER])


def test_next_for_resumes_the_interrupted_entry_then_goes_oldest_first(db_path: Path) -> None:
    with Store.open(db_path) as s:
        ids = [s.inbox.enqueue(EID, f"k{i}", "k", bytes([i]), origin=None, now=float(i)).id for i in range(3)]
        assert s.inbox.start(ids[1], now=5.0)
        assert not s.inbox.start(ids[1], now=5.0)
    with Store.open(db_path) as s:  # as after a crash
        order = []
        while (entry := s.inbox.next_for(EID)) is not None:
            order.append(entry.id)
            s.inbox.finish(entry.id, now=9.0)
        assert order == [ids[1], ids[0], ids[2]]
        assert not s.inbox.finish(ids[0], now=10.0)


def test_requeue_and_purge_done(store: Store) -> None:
    e = store.inbox.enqueue(EID, "k", "k", b"x", origin=None, now=1.0)
    store.inbox.start(e.id, now=2.0)
    assert store.inbox.requeue(e.id, now=3.0)
    assert store.inbox.get(e.id) is not None and store.inbox.get(e.id).state == "queued"  # type: ignore[union-attr]
    store.inbox.finish(e.id, now=4.0)
    assert store.inbox.purge_done(older_than=4.0) == 0
    assert store.inbox.purge_done(older_than=5.0) == 1
    assert store.inbox.find(EID, "k") is None


def test_transaction_key_names_the_eim_and_the_transaction() -> None:
    assert transaction_key("eim1", b"\x01\xab") == "eim:eim1/tx:01ab"
    assert transaction_key("eim1", b"\x01") != transaction_key("eim2", b"\x01")
