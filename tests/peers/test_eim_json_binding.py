"""The eIM's JSON binding (POST /gsma/rsp2/esipa/<function>): the same package and indirect
download flows as the ASN.1 binding, signed blobs carried as base64 of their exact DER."""

from __future__ import annotations

from typing import Any

from gateway.backhaul import esipa_client
from gateway.backhaul.http import BackhaulHttp, Server
from gateway.spec import codec, esipa, esipa_json
from hil.euicc import SoftEuicc
from hil.peers.eim import EimServer
from hil.peers.smdpp import SmdppServer
from hil.pki import RspPki
from tests.peers.conftest import server_for
from tests.peers.es10b_script import Card
from tests.peers.test_eim_flows import add_initial_eim


async def call(http: BackhaulHttp, server: Server, function: str, value: Any) -> Any:
    body = await esipa_client.exchange_json(http, server, esipa.FUNCTIONS[function].json_name,
                                            esipa_json.encode_request(function, value))
    return None if body is None else esipa_json.decode_response(function, body)


async def test_psmo_package_and_result_over_the_json_binding(
        pki: RspPki, eim: EimServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    server = server_for(pki, eim.url)
    card = Card(euicc)
    add_initial_eim(card, eim)
    package = eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "listProfileInfo"}]})
    kind, request = await call(http, server, "GetEimPackage", {"eidValue": euicc.eid})
    assert kind == "euiccPackageRequest" and isinstance(request, bytes)
    result = card.call(request)
    answer = await call(http, server, "ProvideEimPackageResult",
                        {"eidValue": euicc.eid, "eimPackageResult": ("euiccPackageResult", result)})
    assert answer[0] == "eimAcknowledgements"
    assert package.state == "done" and eim.service.devices[euicc.eid].results[-1].verified


async def test_indirect_download_over_the_json_binding(
        pki: RspPki, smdpp: SmdppServer, eim: EimServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    server = server_for(pki, eim.url)
    card = Card(euicc)
    add_initial_eim(card, eim)
    order = smdpp.service.order_profile(size=10_000)
    eim.service.queue_profile_download(euicc.eid, {"activationCode": order.to_json(smdpp.address)["activationCode"]})
    kind, trigger = await call(http, server, "GetEimPackage", {"eidValue": euicc.eid})
    assert kind == "profileDownloadTriggerRequest"
    challenge, info1 = card.challenge_and_info1()
    kind, ok = await call(http, server, "InitiateAuthentication", {
        "euiccChallenge": challenge, "euiccInfo1": info1, "eimTransactionId": trigger["eimTransactionId"]})
    assert kind == "initiateAuthenticationOkEsipa"
    asr = card.authenticate_server(ok["serverSigned1"], ok["serverSignature1"], ok["euiccCiPKIdentifierToBeUsed"],
                                   ok["serverCertificate"], ok["matchingId"])
    kind, auth = await call(http, server, "AuthenticateClient",
                            {"transactionId": ok["transactionId"], "authenticateServerResponse": asr})
    assert kind == "authenticateClientOkDPEsipa"
    prepare = card.prepare_download(auth["smdpSigned2"], auth["smdpSignature2"], auth["smdpCertificate"])
    kind, bpp = await call(http, server, "GetBoundProfilePackage",
                           {"transactionId": ok["transactionId"], "prepareDownloadResponse": prepare})
    assert kind == "getBoundProfilePackageOkEsipa"
    pir = card.load_bpp(bpp["boundProfilePackage"])
    assert await call(http, server, "HandleNotification", ("pendingNotification", pir)) is None
    assert order.state == "installed"
    assert [p.iccid for p in euicc.profiles] == [order.iccid]
    assert codec.decode("ProfileInstallationResult", pir)["profileInstallationResultData"]["finalResult"][0] == \
        "successResult"
