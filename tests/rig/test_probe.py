"""The test-card check that guards every state-changing scenario, and the probe's readings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from hypothesis import HealthCheck, given, settings, strategies as st

from hil.pki import RspPki, generate_pki
from hil.rig.probe import bits, check_test_card, describe_profile

pytestmark = pytest.mark.timeout(60)
OTHER_EID = "89049032000000000000000000000172"


def certs(pki: RspPki, eid: str) -> dict[str, bytes]:
    _, cert = pki.issue_euicc(eid)
    return {"eumCertificate": pki.eum.cert_der, "euiccCertificate": cert.public_bytes(Encoding.DER)}


def test_a_card_whose_chain_ends_at_the_test_ci_is_a_test_card(pki: RspPki) -> None:
    verdict = check_test_card(certs(pki, pki.eid), pki.eid_bytes, pki.ci.cert)
    assert verdict.test_card and "chain verified" in verdict.reason


def test_a_card_without_certificates_is_not_proven_a_test_card(pki: RspPki) -> None:
    verdict = check_test_card({}, pki.eid_bytes, pki.ci.cert)
    assert not verdict.test_card and "GetCerts" in verdict.reason


def test_unreadable_certificates_are_not_a_test_card(pki: RspPki) -> None:
    verdict = check_test_card({"eumCertificate": b"\x30\x03\x02\x01\x00", "euiccCertificate": b""},
                              pki.eid_bytes, pki.ci.cert)
    assert not verdict.test_card and "unreadable" in verdict.reason


def test_a_card_under_another_ci_is_not_a_test_card(pki: RspPki, tmp_path: Path) -> None:
    other = generate_pki(tmp_path / "production-like")
    verdict = check_test_card(certs(other, other.eid), other.eid_bytes, pki.ci.cert)
    assert not verdict.test_card and "not issued by the test CI" in verdict.reason


def test_an_euicc_certificate_of_another_eid_is_not_this_card(pki: RspPki) -> None:
    verdict = check_test_card(certs(pki, OTHER_EID), pki.eid_bytes, pki.ci.cert)
    assert not verdict.test_card and OTHER_EID in verdict.reason


def test_an_euicc_certificate_not_signed_by_the_eum_given_is_refused(pki: RspPki, tmp_path: Path) -> None:
    other = generate_pki(tmp_path / "other")
    mixed = {"eumCertificate": pki.eum.cert_der, "euiccCertificate": certs(other, pki.eid)["euiccCertificate"]}
    verdict = check_test_card(mixed, pki.eid_bytes, pki.ci.cert)
    assert not verdict.test_card and "not issued by its EUM" in verdict.reason


def test_profile_and_notification_readings() -> None:
    assert bits((b"\x50", 4), ("install", "enable", "disable", "delete")) == ["enable", "delete"]
    assert describe_profile({"iccid": bytes.fromhex("98940000000000000001"), "profileState": 1,
                             "notificationConfigurationInfo": [
                                 {"profileManagementOperation": (b"\xf0", 4), "notificationAddress": "dp.example"}]}
                            ) == {"iccid": "89490000000000000010", "state": "enabled",
                                  "notificationAddresses": ["dp.example"]}


class GarbageCard:
    """A card whose every answer is one of the given byte strings, in turn."""

    name = "garbage"
    description = "a card answering arbitrary bytes"

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.sent = 0

    def transmit(self, apdu: bytes) -> bytes:
        self.sent += 1
        return self.answers[self.sent % len(self.answers)]

    def refresh(self, kind: str) -> None:
        return None

    def close(self) -> None:
        return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=40), st.binary(max_size=40).map(lambda b: b + b"\x90\x00"),
                          st.sampled_from([b"\x01\x90\x00", b"\x61\x10", b"\x6c\x05", b"\x6a\x82", b""])),
                min_size=1, max_size=8))
def test_a_card_answering_anything_gives_a_result_never_a_crash_nor_a_hang(pki: RspPki, answers: list[bytes]) -> None:
    from hil.rig import RigOptions, run_scenario

    result = asyncio.run(run_scenario(GarbageCard(answers), RigOptions("probe", pki)))  # type: ignore[arg-type]
    assert result.ok or result.error
    assert result.error is None or not result.error.startswith("internal error"), result.error
    assert all(s.detail or s.ok for s in result.steps)


def test_a_card_that_never_stops_asking_for_get_response_is_a_protocol_error(pki: RspPki) -> None:
    from hil.rig import RigOptions, run_scenario

    card = GarbageCard([b"\x61\x10"])
    result = asyncio.run(run_scenario(card, RigOptions("probe", pki)))  # type: ignore[arg-type]
    assert not result.ok and "GET RESPONSE" in (result.error or "")
    assert card.sent < 1000
