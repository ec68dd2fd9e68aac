"""Persisted policy state read back from the store: anything malformed is a DecodeError, never a crash."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import DecodeError
from gateway.policy.fallback import DeviceFallback, Wave
from gateway.policy.roaming import DeviceRoaming

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


def _near(valid: dict[str, object]) -> st.SearchStrategy[bytes]:
    """Valid objects with one field replaced by anything."""
    return st.tuples(st.sampled_from(sorted(valid)), json_values).map(
        lambda kv: json.dumps({**valid, kv[0]: kv[1]}).encode())


VALID_DEVICE = json.loads(DeviceFallback(state="fallback", group="g", return_at=5.0, token="t").to_json())
VALID_WAVE = {"v": 1, "inflight": {"89": ["t", 1.0]}, "report_slots": [3], "outages": {
    "g": {"raised": True, "recent": {"89": 2.0}, "affected": ["89"]}}}
VALID_ROAMING = json.loads(DeviceRoaming("20801", {"724": [1, 2]}, (2, "724"), ["724"]).to_json())


def _accepts_or_refuses(parse: object, blob: bytes) -> None:
    try:
        parse(blob)  # type: ignore[operator]
    except DecodeError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()) | _near(VALID_DEVICE))
def test_fallback_state_parser_never_crashes(blob: bytes) -> None:
    _accepts_or_refuses(DeviceFallback.from_json, blob)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64) | _near(VALID_WAVE))
def test_wave_state_parser_never_crashes(blob: bytes) -> None:
    _accepts_or_refuses(Wave.from_json, blob)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64) | _near(VALID_ROAMING))
def test_roaming_state_parser_never_crashes(blob: bytes) -> None:
    _accepts_or_refuses(DeviceRoaming.from_json, blob)


def test_the_valid_samples_parse() -> None:
    assert DeviceFallback.from_json(json.dumps(VALID_DEVICE).encode()).state == "fallback"
    assert Wave.from_json(json.dumps(VALID_WAVE).encode()).outages["g"].raised
    assert DeviceRoaming.from_json(json.dumps(VALID_ROAMING).encode()).home == "20801"
