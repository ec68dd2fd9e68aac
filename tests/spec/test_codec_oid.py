"""OBJECT IDENTIFIER values decode per X.690 8.19.4, including first-arc-2 OIDs past 2.39."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import DecodeError
from gateway.spec import codec

@pytest.mark.parametrize("oid", ["2.999.10", "2.40.1", "2.47.5", "2.23.146.1.2.1.4", "1.2.840.10045.2.1", "0.9.2342"])
def test_oids_with_any_first_arcs_survive_a_round_trip(oid: str) -> None:
    value = {"immediateEnableFlag": None, "defaultSmdpOid": oid, "defaultSmdpAddress": "smdp.example"}
    psmo = ("configureImmediateEnable", value)
    assert codec.decode("Psmo", codec.encode("Psmo", psmo)) == psmo


@given(st.tuples(st.sampled_from([0, 1]), st.integers(0, 39)) | st.tuples(st.just(2), st.integers(0, 10**6)),
       st.lists(st.integers(0, 2**40), max_size=6))
def test_generated_oids_round_trip(head: tuple[int, int], tail: list[int]) -> None:
    oid = ".".join(str(a) for a in (*head, *tail))
    psmo = ("configureImmediateEnable", {"defaultSmdpOid": oid})
    assert codec.decode("Psmo", codec.encode("Psmo", psmo)) == psmo


def test_a_truncated_oid_is_a_decode_error() -> None:
    good = codec.encode("Psmo", ("configureImmediateEnable", {"defaultSmdpOid": "2.999.10"}))
    # the OID's last subidentifier byte (0x0A) gets its continuation bit set: truncated
    bad = good.replace(bytes.fromhex("88370a"), bytes.fromhex("88378a"))
    assert bad != good
    with pytest.raises(DecodeError):
        codec.decode("Psmo", bad)
