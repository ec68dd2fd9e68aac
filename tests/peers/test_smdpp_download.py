"""Direct profile download (SGP.22 §3.1.3) between the SM-DP+ peer and the software eUICC."""

from __future__ import annotations

import asyncio
import importlib

from gateway.backhaul.http import BackhaulHttp
from gateway.spec import codec
from hil import rspcrypto
from hil.euicc import SoftEuicc
from hil.peers.smdpp import SmdppServer
from hil.pki import RspPki
from tests.peers.conftest import server_for
from tests.peers.es10b_script import Card, deliver_notifications_es9, direct_download


async def test_direct_download_installs_the_ordered_profile_and_the_smdpp_verifies_the_result(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    order = smdpp.service.order_profile(size=20_000)
    card = Card(euicc)
    pir = await direct_download(card, http, server_for(pki, smdpp.url), smdpp.address, order.matching_id)
    data = codec.decode("ProfileInstallationResult", pir)["profileInstallationResultData"]
    assert data["finalResult"][0] == "successResult", data
    assert [p.iccid for p in euicc.profiles] == [order.iccid]
    assert await deliver_notifications_es9(card, http, server_for(pki, smdpp.url)) == 1
    assert order.state == "installed"
    (note,) = smdpp.service.notifications
    assert note.verified and note.kind == "profileInstallationResult"


async def test_a_100_kb_profile_is_bound_in_scp03t_segments_that_the_euicc_verifies_one_by_one(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    order = smdpp.service.order_profile(size=100_000)
    pir = await direct_download(Card(euicc), http, server_for(pki, smdpp.url), smdpp.address, order.matching_id)
    data = codec.decode("ProfileInstallationResult", pir)["profileInstallationResultData"]
    assert data["finalResult"][0] == "successResult"
    (profile,) = euicc.profiles
    assert profile.profile_elements >= 100_000
    session = next(iter(smdpp.service.sessions.values()))
    assert session.bpp is not None
    bpp = codec.decode("BoundProfilePackage", session.bpp.der)
    assert len(bpp["sequenceOf86"]) == session.bpp.segments_86 >= 100
    assert all(len(segment) <= 1020 for segment in bpp["sequenceOf86"])


async def test_the_bpp_decodes_in_an_independent_asn1_implementation(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    order = smdpp.service.order_profile(size=3000)
    await direct_download(Card(euicc), http, server_for(pki, smdpp.url), smdpp.address, order.matching_id)
    der = next(iter(smdpp.service.sessions.values())).bpp.der  # type: ignore[union-attr]
    module = importlib.import_module("asn1_play.generated_code.asn1.GSMA.SGP_32.v1_2.python_gen.sgp32.sgp32")
    oracle = module.GLOBAL.MOD["RSPDefinitions"]["BoundProfilePackage"]
    oracle.from_der(der)
    assert oracle.to_der() == der


async def test_a_bpp_with_replace_session_keys_loads_with_the_profile_protection_keys(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    order = smdpp.service.order_profile(size=5000, replace_session_keys=True)
    pir = await direct_download(Card(euicc), http, server_for(pki, smdpp.url), smdpp.address, order.matching_id)
    assert codec.decode("ProfileInstallationResult", pir)["profileInstallationResultData"]["finalResult"][0] == \
        "successResult"
    der = next(iter(smdpp.service.sessions.values())).bpp.der  # type: ignore[union-attr]
    assert len(codec.decode("BoundProfilePackage", der)["secondSequenceOf87"]) == 1


async def test_concurrent_direct_downloads_of_several_euiccs_each_get_their_own_profile(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp) -> None:
    eids = [rspcrypto.eid_with_check_digits("89049032" + f"{n:022d}") for n in range(100, 105)]
    cards = [Card(SoftEuicc(pki, eid)) for eid in eids]
    orders = [smdpp.service.order_profile(size=8000, eid=bytes.fromhex(eid)) for eid in eids]
    server = server_for(pki, smdpp.url)
    results = await asyncio.gather(*(direct_download(card, http, server, smdpp.address, order.matching_id)
                                     for card, order in zip(cards, orders)))
    for card, order, pir in zip(cards, orders, results):
        assert codec.decode("ProfileInstallationResult", pir)["profileInstallationResultData"]["finalResult"][0] == \
            "successResult"
        assert [p.iccid for p in card.euicc.profiles] == [order.iccid]
