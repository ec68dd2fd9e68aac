"""The SM-DP+ refuses what a real one refuses, with the SGP.22 §5.6 subject/reason codes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from gateway.backhaul import es9p_client
from gateway.backhaul.http import BackhaulHttp, Server
from gateway.errors import FunctionFailed
from gateway.spec import codec, es9p
from hil import rspcrypto
from hil.euicc import SoftEuicc
from hil.peers.smdpp import Order, SmdppServer
from hil.pki import RspPki
from tests.peers.conftest import server_for
from tests.peers.es10b_script import Card, deliver_notifications_es9, direct_download


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def timed_smdpp(pki: RspPki, clock: Clock) -> AsyncIterator[SmdppServer]:
    async with SmdppServer(pki, session_ttl_s=60.0, clock=clock) as server:
        yield server


async def authenticated(card: Card, http: BackhaulHttp, smdp: Server, address: str,
                        matching_id: str | None) -> tuple[es9p.InitiateAuthenticationResponse, bytes]:
    challenge, info1 = card.challenge_and_info1()
    init = await es9p_client.initiate_authentication(
        http, smdp, es9p.InitiateAuthenticationRequest(challenge, info1, address))
    asr = card.authenticate_server(init.server_signed1, init.server_signature1, init.euicc_ci_pkid_to_be_used,
                                   init.server_certificate, matching_id)
    return init, asr


async def session_after_authenticate_client(pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc
                                            ) -> tuple[Order, Server, Card, es9p.InitiateAuthenticationResponse]:
    """An order and an RSP session through AuthenticateClient: (order, server, card, InitiateAuthentication)."""
    order = smdpp.service.order_profile(size=4096)
    server = server_for(pki, smdpp.url)
    card = Card(euicc)
    init, asr = await authenticated(card, http, server, smdpp.address, order.matching_id)
    await es9p_client.authenticate_client(http, server, es9p.AuthenticateClientRequest(init.transaction_id, asr))
    return order, server, card, init


def flip_signature(der: bytes, signature: bytes) -> bytes:
    assert der.count(signature) == 1
    return der.replace(signature, bytes([signature[0] ^ 1]) + signature[1:])


async def refused(call: object) -> tuple[str | None, str | None]:
    with pytest.raises(FunctionFailed) as info:
        await call  # type: ignore[misc]
    return info.value.subject_code, info.value.reason_code


async def test_initiate_authentication_for_another_smdp_address_is_8_8_1_3_8(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    challenge, info1 = Card(euicc).challenge_and_info1()
    codes = await refused(es9p_client.initiate_authentication(
        http, server_for(pki, smdpp.url), es9p.InitiateAuthenticationRequest(challenge, info1, "other.example:443")))
    assert codes == ("8.8.1", "3.8")


async def test_initiate_authentication_without_a_shared_ci_is_8_8_4_3_7(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp) -> None:
    info1 = codec.encode("EUICCInfo1", {"svn": bytes([2, 5, 0]), "euiccCiPKIdListForVerification": [bytes(20)],
                                        "euiccCiPKIdListForSigning": [bytes(20)]})
    codes = await refused(es9p_client.initiate_authentication(
        http, server_for(pki, smdpp.url), es9p.InitiateAuthenticationRequest(bytes(16), info1, smdpp.address)))
    assert codes == ("8.8.4", "3.7")


async def test_authenticate_client_with_a_bad_euicc_signature1_is_8_1_6_1_and_the_session_stays_open(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    order = smdpp.service.order_profile(size=4096)
    server = server_for(pki, smdpp.url)
    card = Card(euicc)
    init, asr = await authenticated(card, http, server, smdpp.address, order.matching_id)
    signature = codec.decode("AuthenticateServerResponse", asr)[1]["euiccSignature1"]
    codes = await refused(es9p_client.authenticate_client(
        http, server, es9p.AuthenticateClientRequest(init.transaction_id, flip_signature(asr, signature))))
    assert codes == ("8.1", "6.1")
    assert order.state == "released"
    ok = await es9p_client.authenticate_client(http, server, es9p.AuthenticateClientRequest(init.transaction_id, asr))
    assert ok.transaction_id == init.transaction_id


async def test_unknown_transaction_id_is_8_10_1_3_9_on_every_session_function(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    order = smdpp.service.order_profile(size=4096)
    server = server_for(pki, smdpp.url)
    _, asr = await authenticated(Card(euicc), http, server, smdpp.address, order.matching_id)
    unknown = bytes(16)
    assert await refused(es9p_client.authenticate_client(
        http, server, es9p.AuthenticateClientRequest(unknown, asr))) == ("8.10.1", "3.9")
    assert await refused(es9p_client.get_bound_profile_package(
        http, server, es9p.GetBoundProfilePackageRequest(unknown, asr))) == ("8.10.1", "3.9")
    assert await refused(es9p_client.cancel_session(
        http, server, es9p.CancelSessionRequest(unknown, asr))) == ("8.10.1", "3.9")


async def test_an_order_bound_to_another_eid_is_8_1_1_3_8(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    other = rspcrypto.eid_with_check_digits("89049032" + "0" * 21 + "9")
    order = smdpp.service.order_profile(size=4096, eid=bytes.fromhex(other))
    server = server_for(pki, smdpp.url)
    init, asr = await authenticated(Card(euicc), http, server, smdpp.address, order.matching_id)
    assert await refused(es9p_client.authenticate_client(
        http, server, es9p.AuthenticateClientRequest(init.transaction_id, asr))) == ("8.1.1", "3.8")


async def test_an_unknown_matching_id_is_8_2_6_3_8_and_no_default_order_is_8_2_5_4_3(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    server = server_for(pki, smdpp.url)
    card = Card(euicc)
    init, asr = await authenticated(card, http, server, smdpp.address, "NO-SUCH-ORDER")
    assert await refused(es9p_client.authenticate_client(
        http, server, es9p.AuthenticateClientRequest(init.transaction_id, asr))) == ("8.2.6", "3.8")
    init, asr = await authenticated(card, http, server, smdpp.address, None)
    assert await refused(es9p_client.authenticate_client(
        http, server, es9p.AuthenticateClientRequest(init.transaction_id, asr))) == ("8.2.5", "4.3")


async def test_an_euicc_whose_eid_is_outside_the_eum_constraint_is_8_1_3_6_1(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp) -> None:
    outsider = SoftEuicc(pki, rspcrypto.eid_with_check_digits("89049099" + "0" * 21 + "7"))
    order = smdpp.service.order_profile(size=4096)
    server = server_for(pki, smdpp.url)
    init, asr = await authenticated(Card(outsider), http, server, smdpp.address, order.matching_id)
    assert await refused(es9p_client.authenticate_client(
        http, server, es9p.AuthenticateClientRequest(init.transaction_id, asr))) == ("8.1.3", "6.1")


async def test_an_expired_session_is_refused_as_unknown_and_its_order_released(
        pki: RspPki, timed_smdpp: SmdppServer, clock: Clock, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    smdpp = timed_smdpp
    order = smdpp.service.order_profile(size=4096)
    server = server_for(pki, smdpp.url)
    card = Card(euicc)
    init, asr = await authenticated(card, http, server, smdpp.address, order.matching_id)
    auth = await es9p_client.authenticate_client(http, server, es9p.AuthenticateClientRequest(init.transaction_id, asr))
    assert order.state == "downloading"
    prepare = card.prepare_download(auth.smdp_signed2, auth.smdp_signature2, auth.smdp_certificate)
    clock.now += 61
    assert await refused(es9p_client.get_bound_profile_package(
        http, server, es9p.GetBoundProfilePackageRequest(init.transaction_id, prepare))) == ("8.10.1", "3.9")
    assert order.state == "released"


async def test_an_expired_order_is_8_8_5_4_10(
        pki: RspPki, timed_smdpp: SmdppServer, clock: Clock, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    order = timed_smdpp.service.order_profile(size=4096, ttl_s=10)
    clock.now += 11
    server = server_for(pki, timed_smdpp.url)
    init, asr = await authenticated(Card(euicc), http, server, timed_smdpp.address, order.matching_id)
    assert await refused(es9p_client.authenticate_client(
        http, server, es9p.AuthenticateClientRequest(init.transaction_id, asr))) == ("8.8.5", "4.10")


async def test_get_bpp_with_a_bad_euicc_signature2_is_8_1_6_1(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    order = smdpp.service.order_profile(size=4096)
    server = server_for(pki, smdpp.url)
    card = Card(euicc)
    init, asr = await authenticated(card, http, server, smdpp.address, order.matching_id)
    auth = await es9p_client.authenticate_client(http, server, es9p.AuthenticateClientRequest(init.transaction_id, asr))
    prepare = card.prepare_download(auth.smdp_signed2, auth.smdp_signature2, auth.smdp_certificate)
    signature = codec.decode("PrepareDownloadResponse", prepare)[1]["euiccSignature2"]
    assert await refused(es9p_client.get_bound_profile_package(
        http, server, es9p.GetBoundProfilePackageRequest(init.transaction_id, flip_signature(prepare, signature)))
    ) == ("8.1", "6.1")


async def test_a_cancel_session_signed_for_another_smdp_oid_is_8_8_3_10_and_2_999_10_decodes_as_itself(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    order, server, card, init = await session_after_authenticate_client(pki, smdpp, http, euicc)
    assert euicc.session is not None and euicc.session.smdp_oid == smdpp.service.oid == "2.999.10"
    euicc.session.smdp_oid = "2.999.11"                      # the card signs another SM-DP+'s OID
    wrong = card.cancel_session(init.transaction_id, 1)
    signed = codec.decode("CancelSessionResponse", wrong)[1]["euiccCancelSessionSigned"]
    assert signed["smdpOid"] == "2.999.11"                    # decoded as encoded (first arc 2)
    assert await refused(es9p_client.cancel_session(
        http, server, es9p.CancelSessionRequest(init.transaction_id, wrong))) == ("8.8", "3.10")
    assert order.state != "released"     # the right OID is accepted: the test below


async def test_a_signed_cancel_session_releases_the_order_for_a_later_download(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    order, server, card, init = await session_after_authenticate_client(pki, smdpp, http, euicc)
    cancel = card.cancel_session(init.transaction_id, 1)   # postponed
    signature = codec.decode("CancelSessionResponse", cancel)[1]["euiccCancelSessionSignature"]
    assert await refused(es9p_client.cancel_session(
        http, server, es9p.CancelSessionRequest(init.transaction_id, flip_signature(cancel, signature)))
    ) == ("8.1", "6.1")
    header = await es9p_client.cancel_session(http, server, es9p.CancelSessionRequest(init.transaction_id, cancel))
    assert header.status == es9p.EXECUTED_SUCCESS
    assert order.state == "released"
    pir = await direct_download(card, http, server, smdpp.address, order.matching_id)
    assert codec.decode("ProfileInstallationResult", pir)["profileInstallationResultData"]["finalResult"][0] \
        == "successResult"
    await deliver_notifications_es9(card, http, server)
    assert order.state == "installed"


async def test_a_notification_sent_twice_is_stored_once_and_a_forged_one_is_stored_unverified(
        pki: RspPki, smdpp: SmdppServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    order = smdpp.service.order_profile(size=4096)
    server = server_for(pki, smdpp.url)
    pir = await direct_download(Card(euicc), http, server, smdpp.address, order.matching_id)
    for _ in range(2):
        await es9p_client.handle_notification(http, server, es9p.HandleNotificationRequest(pir))
    signature = codec.decode("ProfileInstallationResult", pir)["euiccSignPIR"]
    await es9p_client.handle_notification(http, server, es9p.HandleNotificationRequest(flip_signature(pir, signature)))
    assert [n.verified for n in smdpp.service.notifications] == [True, False]
    assert order.state == "installed"
