"""Both peers as their own processes (python -m ...): READY line, admin API over HTTPS, an
indirect download through them, clean exit on SIGTERM, SM-DP+ orders kept in --state."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from gateway.backhaul.http import BackhaulHttp
from gateway.spec import codec
from hil.euicc import SoftEuicc
from hil.peers.common import client_ssl_context
from hil.peers.eim import EimServer
from hil.pki import RspPki
from tests.peers.conftest import server_for
from tests.peers.es10b_script import Card
from tests.peers.test_eim_flows import indirect_download

REPO = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def peer_process(module: str, *args: str) -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert line.startswith("READY https://127.0.0.1:"), line
        yield line.split()[1]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def admin(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with session.request(method, url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_peer_processes_serve_an_indirect_download_and_stop_cleanly_on_sigterm(
        pki: RspPki, http: BackhaulHttp, tmp_path: Path) -> None:
    state = tmp_path / "smdpp.json"
    euicc = SoftEuicc(pki, pki.eid_bytes)
    card = Card(euicc)
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(pki))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with peer_process("hil.peers.smdpp", "--pki", str(pki.directory), "--port", "0",
                                "--state", str(state)) as smdp_url, \
                peer_process("hil.peers.eim", "--pki", str(pki.directory), "--port", "0",
                             "--smdpp", smdp_url) as eim_url:
            order = await admin(session, "POST", smdp_url + "/admin/orders", {"size": 6000})
            identity = await admin(session, "GET", eim_url + "/admin/eim")
            data = codec.decode("EimConfigurationData", bytes.fromhex(identity["eimConfigurationData"]))
            card.es10("AddInitialEimRequest", {"eimConfigurationDataList": [data]})
            queued = await admin(session, "POST", f"{eim_url}/admin/eids/{pki.eid}/download",
                                 {"activationCode": order["activationCode"]})
            assert queued["package"]["state"] == "queued"
            _, pir, answer = await indirect_download(card, http, server_for(pki, eim_url), euicc.eid)
            assert answer[1][0] == "eimAcknowledgements"
            device = await admin(session, "GET", f"{eim_url}/admin/eids/{pki.eid}")
            assert device["packages"][0]["state"] == "done"
            assert device["results"][0]["verified"]
            orders = await admin(session, "GET", smdp_url + "/admin/orders")
            assert orders["orders"][0]["state"] == "installed"
            notes = await admin(session, "GET", smdp_url + "/admin/notifications")
            assert notes["notifications"][0]["verified"]
        async with peer_process("hil.peers.smdpp", "--pki", str(pki.directory), "--port", "0",
                                "--state", str(state)) as smdp_url:
            orders = await admin(session, "GET", smdp_url + "/admin/orders")
            assert [(o["matchingId"], o["state"]) for o in orders["orders"]] == [(order["matchingId"], "installed")]


async def test_admin_api_queues_every_psmo_and_eco_kind_and_refuses_bad_requests(pki: RspPki) -> None:
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(pki))
    async with EimServer(pki) as eim, aiohttp.ClientSession(connector=connector) as session:
        base = f"{eim.url}/admin/eids/{pki.eid}"
        iccid = "89490000000000000012"
        psmos = [{"op": "enable", "iccid": iccid, "rollback": True}, {"op": "disable", "iccid": iccid},
                 {"op": "delete", "iccid": iccid}, {"op": "listProfileInfo", "profileClass": 2, "tagList": "5A"},
                 {"op": "getRAT"}, {"op": "configureImmediateEnable", "immediateEnableFlag": True,
                                    "defaultSmdpAddress": "smdp.example"},
                 {"op": "setFallbackAttribute", "iccid": iccid}, {"op": "unsetFallbackAttribute"},
                 {"op": "setDefaultDpAddress", "defaultDpAddress": "smdp.example"}]
        first = await admin(session, "POST", base + "/psmo", {"operations": psmos})
        ecos = [{"op": "addEim", "self": True}, {"op": "updateEim", "eimId": "other", "eimFqdn": "eim2.example"},
                {"op": "deleteEim", "eimId": "other"}, {"op": "listEim"}]
        second = await admin(session, "POST", base + "/eco", {"operations": ecos})
        await admin(session, "POST", base + "/ipa-euicc-data", {"tags": ["euiccCertificate", "A0"]})
        await admin(session, "POST", base + "/download", {"contactDefaultSmdp": True})
        assert (first["package"]["counterValue"], second["package"]["counterValue"]) == (1, 2)
        request = codec.decode("EuiccPackageRequest", bytes.fromhex(first["package"]["der"]))
        assert [op[0] for op in request["euiccPackageSigned"]["euiccPackage"][1]] == [p["op"] for p in psmos]
        device = await admin(session, "GET", base)
        assert [p["kind"] for p in device["packages"]] == [
            "euiccPackageRequest", "euiccPackageRequest", "ipaEuiccDataRequest", "profileDownloadTriggerRequest"]
        for path, body in (("/psmo", {"operations": [{"op": "reboot"}]}), ("/psmo", {"operations": "x"}),
                           ("/eco", {"operations": [{"op": "enable"}]}), ("/download", {}),
                           ("/psmo", {"operations": [{"op": "enable", "iccid": "12"}]})):
            async with session.post(base + path, json=body) as resp:
                assert resp.status == 400, (path, body)
        async with session.post(base + "/psmo", data=b"{not json") as resp:
            assert resp.status == 400
        async with session.get(f"{eim.url}/admin/eids/1234") as resp:
            assert resp.status == 404
