"""The engine's CBOR blobs: what is written reads back equal, the same value always gives the same
bytes, and anything `loads` could not give back is refused when written, not when read."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import uuid
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import serial
from gateway.core.actions import BackhaulWaiting, SaveSession, Waiting
from gateway.errors import DecodeError, LocalProtocolError

EID = bytes(range(16))

scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20) \
    | st.binary(max_size=40)
plain = st.recursive(scalars, lambda inner: st.tuples(inner, inner) | st.lists(inner, max_size=4).map(tuple)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=30)


def waiting(key: str, attempts: int = 0) -> Waiting:
    return Waiting(key, "result", "eim-1", "ProvideEimPackageResult", 120, "sending", attempts, None)


@settings(max_examples=200)
@given(plain)
def test_plain_values_read_back_equal_with_tuples_for_sequences(value: Any) -> None:
    assert serial.loads(serial.dumps(value)) == value


@settings(max_examples=100)
@given(st.lists(st.text(max_size=10), max_size=6), st.integers(0, 50))
def test_dataclasses_nested_in_containers_read_back_equal(keys: list[str], attempts: int) -> None:
    value = {"actions": (BackhaulWaiting(EID, tuple(waiting(k, attempts) for k in keys)),
                         SaveSession(EID, "idle", b"\x00blob")), "n": attempts}
    assert serial.loads(serial.dumps(value)) == value


def test_the_same_value_always_gives_the_same_bytes_in_insertion_order() -> None:
    one = serial.dumps({"b": 1, "a": waiting("x")})
    two = serial.dumps({"b": 1, "a": waiting("x")})
    assert one == two
    assert serial.dumps({"a": 1, "b": 2}) != serial.dumps({"b": 2, "a": 1})     # deterministic, not sorted
    assert serial.loads(serial.dumps({"a": 1, "b": 2})) == serial.loads(serial.dumps({"b": 2, "a": 1}))


def test_a_dataclass_is_a_tagged_name_and_field_map() -> None:
    item = cbor2.loads(serial.dumps(waiting("k")))
    assert isinstance(item, cbor2.CBORTag) and item.tag == 0xDC
    name, fields = item.value
    assert name == "Waiting"
    assert list(fields) == [f.name for f in dataclasses.fields(Waiting)]


@pytest.mark.parametrize("value", [
    {1, 2}, frozenset({1}), bytearray(b"x"), datetime.datetime(2026, 1, 1), datetime.date(2026, 1, 1),
    decimal.Decimal("1.5"), uuid.UUID(int=1), cbor2.CBORTag(5, 1), complex(1, 2), cbor2.undefined, object(),
])
def test_values_loads_could_not_give_back_are_refused_when_written_with_checks_on(value: Any) -> None:
    assert serial.CHECK_TYPES      # tests/conftest.py turns the checks on for the whole suite
    with pytest.raises(LocalProtocolError, match="cannot serialise a"):
        serial.dumps({"inside": [value]})


@pytest.mark.parametrize("value", [{1, 2}, datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
                                   uuid.UUID(int=1), cbor2.CBORTag(4, [1, 2])])
def test_without_the_checks_such_a_value_is_refused_when_read_back(monkeypatch: pytest.MonkeyPatch, value: Any) -> None:
    monkeypatch.setattr(serial, "CHECK_TYPES", False)
    blob = serial.dumps({"inside": [value]})
    with pytest.raises(DecodeError, match="engine blob"):
        serial.loads(blob)


def test_an_unregistered_dataclass_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Stranger:
        x: int

    with pytest.raises(LocalProtocolError, match="Stranger is not registered"):
        serial.dumps((Stranger(1),))


def test_a_blob_naming_a_class_that_no_longer_exists_is_a_decode_error() -> None:
    blob = cbor2.dumps(cbor2.CBORTag(0xDC, ["GoneSince2025", {"x": 1}]))
    with pytest.raises(DecodeError, match="unknown class 'GoneSince2025'"):
        serial.loads(blob)


def test_a_blob_with_fields_the_class_no_longer_has_is_a_decode_error() -> None:
    blob = cbor2.dumps(cbor2.CBORTag(0xDC, ["Waiting", {"key": "k", "colour": "red"}]))
    with pytest.raises(DecodeError, match="Waiting"):
        serial.loads(blob)


def test_blobs_written_canonically_by_earlier_gateways_still_read_back() -> None:
    value = waiting("k")
    fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(Waiting)}
    old = cbor2.dumps(cbor2.CBORTag(0xDC, ["Waiting", fields]), canonical=True)
    assert serial.loads(old) == value
