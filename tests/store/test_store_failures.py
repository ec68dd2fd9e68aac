"""Disk full, read-only file system, locked and corrupt files: clear errors, nothing stored lost.

Disk full and read-only use real file systems (a 1 MiB tmpfs, a read-only bind mount) and
need root; they are skipped, saying so, elsewhere. The page-count variant of disk full runs
everywhere.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from gateway.store import (
    Store, StoreCorrupt, StoreDiskFull, StoreLocked, StoreOptions, StoreReadOnly,
)
from store_support import fill, read_only_view, tiny_tmpfs

EID = bytes.fromhex("89049032123451234512345678901235")
BIG = os.urandom(96 * 1024)  # incompressible, larger than anything the WAL can reuse


def _store_some(s: Store) -> list[str]:
    keys = [f"k{i}" for i in range(5)]
    for k in keys:
        s.outbox.enqueue("eim", k, "r", k.encode() * 100, now=1.0)
    s.inbox.enqueue(EID, "pkg", "p", b"package", origin="eim1", now=1.0)
    s.sessions.put(EID, "running", b"ctx", now=1.0)
    return keys


def _assert_intact(s: Store, keys: list[str]) -> None:
    assert [(e.key, e.payload) for e in s.outbox.pending()][:len(keys)] == [(k, k.encode() * 100) for k in keys]
    assert s.inbox.find(EID, "pkg") is not None
    assert s.sessions.get(EID) is not None and s.sessions.get(EID).blob == b"ctx"  # type: ignore[union-attr]


def test_disk_full_on_a_real_tiny_file_system_is_clear_and_recoverable(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "fs", "1m") as fs:
        s = Store.open(fs / "gateway.db")
        try:
            keys = _store_some(s)
            filler = fill(fs)
            attempted: list[int] = []
            with pytest.raises(StoreDiskFull) as info:
                for i in range(50):
                    attempted.append(i)
                    with s.transaction():
                        s.outbox.enqueue("eim", f"big{i}", "r", BIG, now=2.0)
                        s.sessions.put(EID, f"state{i}", b"x", now=2.0)
            assert info.value.retryable and "disk full" in str(info.value)
            failed = attempted[-1]
            _assert_intact(s, keys)  # the daemon keeps running on the same connection
            assert f"big{failed}" not in {e.key for e in s.outbox.pending()}
            assert s.sessions.get(EID).state == (f"state{failed - 1}" if failed else "running")  # type: ignore[union-attr]
            filler.unlink()
            assert s.outbox.enqueue("eim", f"big{failed}", "r", BIG, now=3.0).new  # the retry succeeds
        finally:
            s.close()
        with Store.open(fs / "gateway.db") as again:
            again.check()
            _assert_intact(again, keys)
            assert again.outbox.usage().entries == len(again.outbox.pending())


def test_database_size_limit_reports_disk_full_without_root(db_path: Path) -> None:
    with Store.open(db_path) as s:
        keys = _store_some(s)
        pages = s._db.fetchone("PRAGMA page_count", action="test")[0]
        s._db.execute(f"PRAGMA max_page_count = {pages + 2}", action="test")
        with pytest.raises(StoreDiskFull):
            s.outbox.enqueue("eim", "big", "r", BIG, now=2.0)
        _assert_intact(s, keys)
        assert s.outbox.usage().entries == len(keys)


def test_read_only_file_system_is_reported_as_such_and_data_survives(tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.mkdir()
    with Store.open(src / "gateway.db") as s:
        keys = _store_some(s)
    with read_only_view(src, tmp_path / "ro") as ro:
        with pytest.raises(StoreReadOnly, match="read-only") as info:
            Store.open(ro / "gateway.db")
        assert info.value.retryable
    with Store.open(src / "gateway.db") as s:  # the file system is writable again: all there
        _assert_intact(s, keys)


def test_locked_database_times_out_with_a_clear_error_then_works(db_path: Path) -> None:
    with Store.open(db_path, StoreOptions(busy_timeout_s=0.2)) as s:
        keys = _store_some(s)
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreLocked, match="locked") as info:
                with s.transaction():
                    s.outbox.enqueue("eim", "late", "r", b"x", now=2.0)
            assert info.value.retryable
            assert len(s.outbox.pending()) == len(keys)  # reads still work under a writer (WAL)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert s.outbox.enqueue("eim", "late", "r", b"x", now=3.0).new


def test_a_file_that_is_not_a_database_is_reported_corrupt(db_path: Path) -> None:
    db_path.write_bytes(b"this is a log file, not SQLite\n" * 200)
    with pytest.raises(StoreCorrupt, match="not an SQLite database|corrupt") as info:
        Store.open(db_path)
    assert not info.value.retryable


def test_a_damaged_page_is_found_by_check(db_path: Path) -> None:
    with Store.open(db_path) as s:
        for i in range(300):
            s.audit.append(time=float(i), operation="op", result="ok", detail={"n": "x" * 200})
        s.checkpoint()
    raw = bytearray(db_path.read_bytes())
    page = 4096
    for off in range(5 * page, 9 * page, 7):
        raw[off] ^= 0x5A
    db_path.write_bytes(bytes(raw))
    with pytest.raises(StoreCorrupt):
        with Store.open(db_path) as s:
            s.check()
