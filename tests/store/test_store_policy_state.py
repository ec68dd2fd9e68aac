"""Edge-policy state rows: one JSON document per (EID, kind), replaced in place, listed for the
start-up restore; a v1 database gains the table on upgrade and keeps its data."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.store import Store, StoreIntegrityError
from gateway.store.schema import MIGRATIONS

EID = bytes.fromhex("89049032123451234512345678901235")


def test_policy_state_is_one_row_per_eid_and_kind_replaced_in_place(db_path: Path) -> None:
    with Store.open(db_path) as s:
        assert s.policy_state.get(EID, "fallback") is None
        s.policy_state.put(EID, "fallback", '{"v": 1, "state": "fallback"}', now=10.0)
        s.policy_state.put(EID, "fallback", '{"v": 1, "state": "returning"}', now=20.0)
        s.policy_state.put(b"", "wave", '{"v": 1}', now=20.0)
        row = s.policy_state.get(EID, "fallback")
        assert row is not None and (row.blob, row.updated_at) == ('{"v": 1, "state": "returning"}', 20.0)
        assert [(r.eid, r.kind) for r in s.policy_state.list()] == [(b"", "wave"), (EID, "fallback")]
        assert [r.kind for r in s.policy_state.list("wave")] == ["wave"]
    with Store.open(db_path) as s:                      # durable
        assert len(s.policy_state.list()) == 2


def test_a_policy_state_that_is_not_json_is_refused(db_path: Path) -> None:
    with Store.open(db_path) as s:
        with pytest.raises(StoreIntegrityError):
            s.policy_state.put(EID, "fallback", "{not json", now=1.0)
        assert s.policy_state.list() == []


def test_a_policy_state_write_rolls_back_with_its_transaction(db_path: Path) -> None:
    with Store.open(db_path) as s:
        with pytest.raises(RuntimeError), s.transaction():
            s.policy_state.put(EID, "roaming", '{"v": 1}', now=1.0)
            raise RuntimeError("the step failed")
        assert s.policy_state.get(EID, "roaming") is None


def test_a_v1_database_gains_the_policy_state_table_and_keeps_its_data(db_path: Path) -> None:
    with Store.open(db_path, migrations=MIGRATIONS[:1]) as s:
        s.inbox.enqueue(EID, "p1", "pkg", b"pkg", origin="eim1", now=1.0)
    with Store.open(db_path) as s:
        assert (s.migration.from_version, s.schema_version) == (1, len(MIGRATIONS))
        assert s.inbox.find(EID, "p1") is not None
        s.policy_state.put(EID, "fallback", "{}", now=2.0)
