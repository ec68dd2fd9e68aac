"""eIM packages and the indirect download between the eIM peer, the SM-DP+ peer and the
software eUICC, driven by a minimal IPA script over the ESipa ASN.1 binding."""

from __future__ import annotations

from typing import Any

from gateway.backhaul.http import BackhaulHttp
from gateway.spec import codec, signed
from hil.euicc import SoftEuicc
from hil.peers.eim import EimServer
from hil.peers.smdpp import SmdppServer
from hil.pki import RspPki
from tests.peers.conftest import server_for
from tests.peers.es10b_script import Card, child, esipa, esipa_raw


def add_initial_eim(card: Card, eim: EimServer, **kwargs: Any) -> Any:
    data = eim.service.own_configuration_data(**kwargs)
    return codec.decode("AddInitialEimResponse",
                        card.es10("AddInitialEimRequest", {"eimConfigurationDataList": [data]}))


async def run_one_package(card: Card, http: BackhaulHttp, eim_server: Any, eid: bytes) -> tuple[Any, Any]:
    """GetEimPackage -> LoadEuiccPackage -> ProvideEimPackageResult; (package, eIM answer)."""
    body = await esipa_raw(http, eim_server, codec.encode("EsipaMessageFromIpaToEim",
                                                          ("getEimPackageRequest", {"eidValue": eid})))
    assert body is not None
    alternative, package = codec.decode("EsipaMessageFromEimToIpa", body)
    assert alternative == "getEimPackageResponse"
    assert package[0] == "euiccPackageRequest", package
    request = child(body, 0)                       # the signed EuiccPackageRequest, as received
    result = card.call(request)
    answer = await esipa_raw(http, eim_server, signed.provide_eim_package_result(eid, result))
    assert answer is not None
    return package, codec.decode("EsipaMessageFromEimToIpa", answer)


async def test_psmo_package_is_signed_by_the_eim_run_by_the_euicc_and_its_signed_result_acknowledged(
        pki: RspPki, eim: EimServer, http: BackhaulHttp, euicc: SoftEuicc) -> None:
    card = Card(euicc)
    add_initial_eim(card, eim)
    package = eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "listProfileInfo"}, {"op": "getRAT"}]})
    _, answer = await run_one_package(card, http, server_for(pki, eim.url), euicc.eid)
    assert answer[0] == "provideEimPackageResultResponse"
    kind, acks = answer[1]
    assert kind == "eimAcknowledgements" and len(acks) == 1
    (record,) = eim.service.devices[euicc.eid].results
    assert record.verified, record.detail
    assert package.state == "done"
    results = package.result["euiccPackageResultSigned"]["euiccPackageResultDataSigned"]["euiccResult"]
    assert [next(iter(r)) for r in results] == ["listProfileInfoResult", "getRATResult"]
    card.remove_notification(acks[0])
    assert not [n for n in euicc.notifications if n.event == "euiccPackageResult"]
