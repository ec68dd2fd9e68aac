"""Direct profile download (SGP.22 §3.1.3) between the SM-DP+ peer and the software eUICC."""

from __future__ import annotations

from gateway.backhaul.http import BackhaulHttp
from gateway.spec import codec
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
