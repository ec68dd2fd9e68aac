"""TransferEimPackage: the eIM pushes a queued package to the gateway's inject endpoint
(gateway.backhaul.inject_server, real TLS) and processes the answer like a provided result."""

from __future__ import annotations

import asyncio

import pytest

from gateway.backhaul.inject_server import InjectServer, server_ssl_context
from gateway.spec import codec, esipa_json, signed
from hil.euicc import SoftEuicc
from hil.peers.eim import EimServer
from hil.pki import RspPki
from tests.peers.es10b_script import Card, child
from tests.peers.test_eim_flows import add_initial_eim


@pytest.mark.parametrize("binding", ["asn1", "json"])
async def test_a_pushed_package_runs_on_the_euicc_and_its_result_is_verified_then_acknowledged_by_push(
        pki: RspPki, euicc: SoftEuicc, binding: str) -> None:
    card = Card(euicc)
    pushed: list[tuple[str, object]] = []

    async def on_transfer(body: bytes, used: str) -> bytes:
        assert used == binding
        if binding == "json":
            kind, value = esipa_json.decode_request("TransferEimPackage", body)
        else:
            alternative, (kind, value) = codec.decode("EsipaMessageFromEimToIpa", body)
            assert alternative == "transferEimPackageRequest"
        pushed.append((kind, value))
        if kind == "eimAcknowledgements":
            for seq in value:
                card.remove_notification(seq)
        if binding == "json":
            if kind == "euiccPackageRequest":
                return esipa_json.encode_response("TransferEimPackage", ("euiccPackageResult", card.call(value)))
            return esipa_json.encode_response("TransferEimPackage", ("eimPackageReceived", None))
        if kind == "euiccPackageRequest":
            return signed.transfer_eim_package_response(card.call(child(body, 0)))
        return codec.encode("EsipaMessageFromIpaToEim", ("transferEimPackageResponse", ("eimPackageReceived", None)))

    tls = server_ssl_context(str(pki.dptls.cert_path), str(pki.dptls.key_path))
    async with InjectServer(on_transfer, tls, port=0) as inject, \
            EimServer(pki, inject_url=f"https://127.0.0.1:{inject.port}", inject_binding=binding) as eim:
        add_initial_eim(card, eim)
        package = eim.service.queue_euicc_package(euicc.eid, {"psmo": [{"op": "getRAT"}]})
        assert await eim.service.push(package) == "euiccPackageResult"
        assert package.state == "done" and eim.service.devices[euicc.eid].results[-1].verified
        for _ in range(500):                          # the acknowledgement push runs in the background
            if len(pushed) == 2:
                break
            await asyncio.sleep(0.02)
        kind, acks = pushed[1]
        assert kind == "eimAcknowledgements" and acks == [eim.service.devices[euicc.eid].results[-1].seq_number]
        assert not [n for n in euicc.notifications if n.event == "euiccPackageResult"]
        assert eim.service.devices[euicc.eid].pending_acks == []


async def test_a_push_to_an_unreachable_ipa_leaves_the_package_queued_for_polling(pki: RspPki) -> None:
    async with EimServer(pki, inject_url="https://127.0.0.1:9") as eim:
        package = eim.service.queue_euicc_package(pki.eid_bytes, {"psmo": [{"op": "getRAT"}]})
        outcome = await eim.service.push(package)
        assert outcome.startswith("push failed")
        assert package.state == "queued"
