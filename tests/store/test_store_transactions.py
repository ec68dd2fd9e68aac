"""Units of work commit whole or not at all: in-process failures and real SIGKILLs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.store import OutboxLimits, Store, StoreOptions

from crash_worker import SERVER, result_for

EID = bytes.fromhex("89049032123451234512345678901235")
WORKER = Path(__file__).with_name("crash_worker.py")


def test_session_outbox_inbox_commit_together_or_not_at_all(store: Store) -> None:
    entry = store.inbox.enqueue(EID, "tx1", "euiccPackage", b"pkg", origin="eim1", now=1.0)
    store.sessions.put(EID, "running", b"ctx", now=1.0)
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.inbox.finish(entry.id, now=2.0)
            store.outbox.enqueue(SERVER, "result/tx1", "r", b"res", now=2.0)
            store.sessions.put(EID, "idle", b"", now=2.0)
            raise RuntimeError("engine crashed before the step completed")
    assert store.inbox.get(entry.id).state == "queued"  # type: ignore[union-attr]
    assert store.outbox.pending() == [] and store.outbox.usage().entries == 0
    assert store.sessions.get(EID).state == "running"  # type: ignore[union-attr]
    with store.transaction():
        store.inbox.finish(entry.id, now=3.0)
        store.outbox.enqueue(SERVER, "result/tx1", "r", b"res", now=3.0)
        store.sessions.put(EID, "idle", b"", now=3.0)
    assert store.inbox.get(entry.id).state == "done"  # type: ignore[union-attr]
    assert [e.key for e in store.outbox.pending()] == ["result/tx1"]


def test_outbox_full_inside_a_unit_of_work_rolls_the_whole_step_back(db_path: Path) -> None:
    with Store.open(db_path, StoreOptions(outbox_limits=OutboxLimits(max_entries=1))) as s:
        s.outbox.enqueue(SERVER, "old", "r", b"x", now=0.0)
        entry = s.inbox.enqueue(EID, "tx", "p", b"p", origin=None, now=0.0)
        with pytest.raises(Exception) as info:
            with s.transaction():
                s.inbox.finish(entry.id, now=1.0)
                s.sessions.put(EID, "idle", b"", now=1.0)
                s.outbox.enqueue(SERVER, "result/tx", "r", b"y", now=1.0)
        assert type(info.value).__name__ == "OutboxFull"
        assert s.inbox.get(entry.id).state == "queued"  # type: ignore[union-attr]
        assert s.sessions.get(EID) is None
        assert [e.key for e in s.outbox.pending()] == ["old"]


def test_nested_failure_caught_inside_a_transaction_undoes_only_the_inner_part(store: Store) -> None:
    with store.transaction():
        store.sessions.put(EID, "a", b"", now=1.0)
        try:
            with store.transaction():
                store.outbox.enqueue(SERVER, "k", "r", b"x", now=1.0)
                raise ValueError("inner")
        except ValueError:
            pass
        store.audit.append(time=1.0, operation="op", result="ok")
    assert store.sessions.get(EID) is not None and store.outbox.pending() == []
    assert len(store.audit.query()) == 1


def _seed(path: Path, devices: int, per_device: int) -> set[str]:
    keys = set()
    with Store.open(path) as s, s.transaction():
        for d in range(devices):
            eid = EID[:-2] + d.to_bytes(2, "big")
            for n in range(per_device):
                key = f"eim1/{d}/{n}"
                s.inbox.enqueue(eid, key, "euiccPackage", key.encode(), origin="eim1", now=0.0)
                keys.add(key)
    return keys


def _check_consistent(path: Path, keys: set[str]) -> int:
    """Every done package has exactly one result and one audit record; nothing else does."""
    with Store.open(path) as s:
        s.check()
        entries = s.inbox.entries()
        done = {e.key for e in entries if e.state == "done"}
        for entry in entries:
            if entry.state == "in_progress":
                session = s.sessions.get(entry.eid)
                assert session is not None and session.state == "running" and session.blob == entry.key.encode()
        results = {e.key: e.payload for e in s.outbox.pending()}
        assert set(results) == {"result/" + k for k in done}
        assert all(results["result/" + k] == result_for(k) for k in done)
        audited = [r.origin_tx.decode() for r in s.audit.query() if r.origin_tx]
        assert sorted(audited) == sorted(done)
        assert s.outbox.usage().entries == len(done)
        assert done <= keys
        return len(done)




def _spawn(path: Path, mode: str = "run") -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    return subprocess.Popen([sys.executable, str(WORKER), str(path), mode], stdout=subprocess.PIPE,
                            text=True, env=env)


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


def test_sigkill_in_the_middle_of_a_unit_of_work_leaves_no_trace_of_it(db_path: Path) -> None:
    keys = _seed(db_path, devices=2, per_device=2)
    proc = _spawn(db_path, "hang-in-transaction")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    assert proc.stdout.readline().strip() == "IN-TX"  # outbox row and inbox 'done' written, not committed
    _kill(proc)
    assert _check_consistent(db_path, keys) == 0
    with Store.open(db_path) as s:
        entry = s.inbox.next_for(EID[:-2] + b"\0\0")
        assert entry is not None and entry.state == "in_progress"  # unit 1 committed, unit 2 never happened


def test_sigkill_at_random_points_then_restart_runs_every_package_exactly_once(db_path: Path) -> None:
    keys = _seed(db_path, devices=40, per_device=10)
    rng = random.Random(1234)
    kills = 0
    progress: list[int] = []
    for _ in range(12):
        proc = _spawn(db_path, "slow")
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(rng.uniform(0.0, 0.04))
        _kill(proc)
        kills += 1
        progress.append(_check_consistent(db_path, keys))
    proc = _spawn(db_path)
    out, _ = proc.communicate(timeout=60)
    assert out.split() == ["READY", "DONE"]
    assert kills == 12 and sum(0 < done < len(keys) for done in progress) >= 6, progress
    assert _check_consistent(db_path, keys) == len(keys)
