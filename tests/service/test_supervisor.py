"""`ipae-gateway run` as a real process: READY on a real NOTIFY_SOCKET, the API on a real unix
socket, SIGHUP reloading the fleet without dropping sessions, SIGTERM draining and leaving
SQLite consistent, and a device agent with a software eUICC over real CoAP/DTLS."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from daemon_support import (
    Layout,
    api_request,
    device_on_the_daemon,
    free_tcp_port,
    free_udp_port,
    make_eid,
    start_daemon,
    stop_daemon,
    wait_for_socket,
)

from gateway.links.base import DeviceCredential, DeviceRegistry
from gateway.links.mqtt import MqttConfig, acl_text
from gateway.service import demo
from gateway.spec import codec
from gateway.store import Store
from hil.agent.agent import Agent
from hil.agent.mqtt_transport import MqttAgentTransport
from hil.euicc import SoftEuicc
from hil.modem_emulator import EmulatorThread, ModemEmulator, Quirks
from hil.pki import RspPki


def layout(workdir: Path, devices: list[int], **kwargs: str) -> Layout:
    lay = Layout(workdir, free_udp_port(), workdir / "api.sock", devices, **kwargs)
    lay.write()
    return lay


async def test_run_notifies_ready_serves_the_api_reloads_on_sighup_and_drains_on_sigterm(workdir: Path) -> None:
    lay = layout(workdir, [1])
    daemon = start_daemon(lay, {"WATCHDOG_USEC": "400000"})
    try:
        ready = daemon.wait_notify("READY=1")
        assert "STATUS=1 devices" in ready
        daemon.wait_notify("WATCHDOG=1", timeout=5)
        await wait_for_socket(lay.socket_path)
        assert await daemon.get("/v1/health") == (200, {"status": "ok"})
        status, body = await daemon.get("/v1/status")
        assert status == 200 and body["devices"] == 1 and body["links"]["coap"].endswith(f":{lay.coap_port}")
        # what waits for the backhaul, against the configured bound (gateway.toml defaults)
        assert body["outbox"] == {"entries": 0, "bytes": 0, "max_entries": 100_000, "max_bytes": 256 * 1024 * 1024,
                                  "alarm_ratio": 0.8, "level": "ok", "holding_new_work": False}
        status, body = await daemon.get("/v1/devices")
        assert [d["eid"] for d in body["devices"]] == [make_eid(1).hex()]

        lay.devices = [1, 2]
        lay.write()
        daemon.signal(signal.SIGHUP)
        daemon.wait_notify("RELOADING=1")
        for _ in range(100):
            status, body = await daemon.get("/v1/status")
            if body["reloads"] == 1:
                break
            await asyncio.sleep(0.05)
        assert body["reloads"] == 1 and body["devices"] == 2
        status, body = await daemon.get("/v1/devices")
        assert [d["eid"] for d in body["devices"]] == [make_eid(1).hex(), make_eid(2).hex()]

        daemon.signal(signal.SIGTERM)
        assert daemon.process.wait(30) == 0
        daemon.wait_notify("STOPPING=1")
    finally:
        stop_daemon(daemon)
    assert not lay.socket_path.exists()
    wal = lay.db.with_name(lay.db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0      # checkpointed at stop
    with Store.open(lay.db) as store:
        store.check()
        assert {d.eid for d in store.devices.list()} == {make_eid(1), make_eid(2)}


async def test_a_bad_reload_keeps_the_running_configuration(workdir: Path) -> None:
    lay = layout(workdir, [1])
    daemon = start_daemon(lay)
    try:
        daemon.wait_notify("READY=1")
        await wait_for_socket(lay.socket_path)
        lay.config.write_text(lay.config.read_text() + "\n[gateway.nonsense]\n")
        status, body = await daemon.post("/v1/reload")
        assert status == 200 and body["reloaded"] is False and "nonsense" in body["error"]
        status, body = await daemon.get("/v1/status")
        assert body["devices"] == 1 and body["reloads"] == 0
    finally:
        assert stop_daemon(daemon) == 0


def test_a_bad_configuration_is_refused_with_exit_2_naming_the_key(workdir: Path) -> None:
    lay = layout(workdir, [1], extra="[links.mqtt]\nenabled = true\n")
    daemon = start_daemon(lay)
    assert daemon.process.wait(30) == 2
    assert "links.mqtt.broker_host" in daemon.stderr()
    stop_daemon(daemon)


async def test_a_device_agent_with_a_soft_euicc_exchanges_with_the_daemon_over_coap_dtls(
        workdir: Path, pki: RspPki) -> None:
    lay = layout(workdir, [1])
    eid = make_eid(1)
    async with device_on_the_daemon(lay, SoftEuicc(pki, eid)) as (daemon, agent):
        report = await agent.run_session()
        assert report.error is None and report.transport_error is None
        assert report.idle_after_s is not None and report.exchanges >= 2 and report.apdus >= 1

        status, device = await daemon.get(f"/v1/devices/{eid.hex()}")
        assert status == 200 and device["last_contact"] is not None and device["session"] is not None
        status, metrics = await daemon.get("/metrics")
        rt = [line for line in metrics.splitlines() if line.startswith("ipae_gateway_round_trips_total")]
        assert sum(float(line.split()[-1]) for line in rt) == report.exchanges

        shown = daemon.cli("device", eid.hex(), "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["eid"] == eid.hex()
        table = daemon.cli("devices")
        assert table.returncode == 0 and eid.hex() in table.stdout and "sensor 1" in table.stdout

        state = device["state"]
        daemon.signal(signal.SIGHUP)
        for _ in range(100):
            status, body = await daemon.get("/v1/status")
            if body["reloads"] == 1:
                break
            await asyncio.sleep(0.05)
        assert body["reloads"] == 1 and body["engine_sessions"] == 1     # the reload kept the session
        assert (await daemon.get(f"/v1/devices/{eid.hex()}"))[1]["state"] == state

    again = start_daemon(lay)                                              # a restart resumes it
    try:
        again.wait_notify("READY=1")
        await wait_for_socket(lay.socket_path)
        status, device = await again.get(f"/v1/devices/{eid.hex()}")
        assert device["state"] == state and device["session"] is not None
    finally:
        assert stop_daemon(again) == 0
    conn = sqlite3.connect(lay.db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (1,)
    finally:
        conn.close()


@pytest.fixture
def pty_pair() -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals under /dev/pts (socat): (gateway end, modem end)."""
    proc = subprocess.Popen(["socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    paths: list[str] = []
    try:
        while len(paths) < 2:
            line = proc.stderr.readline()
            if not line:
                raise RuntimeError("socat did not create the pty pair")
            found = re.search(r"PTY is (/dev/pts/\d+)", line)
            if found:
                paths.append(found.group(1))
        yield paths[0], paths[1]
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()


async def test_a_modem_on_a_serial_port_is_driven_by_the_daemon_as_its_own_device(
        workdir: Path, pki: RspPki, pty_pair: tuple[str, str]) -> None:
    eid = make_eid(7)
    lay = layout(workdir, [1], extra=f'[links.serial]\nenabled = true\nports = ["{pty_pair[0]}"]\n')
    fleet = lay.directory / "devices.d" / "fleet.toml"
    fleet.write_text(fleet.read_text() + f'[[device]]\neid = "{eid.hex()}"\nlink = "serial"\n'
                     f'identity = "{pty_pair[0]}"\npoll_interval_s = 1.0\n')
    card = SoftEuicc(pki, eid)
    with EmulatorThread(ModemEmulator(card, Quirks.parse("")), pty_pair[1], idle_urc_s=0.05):
        daemon = start_daemon(lay)
        try:
            daemon.wait_notify("READY=1")
            await wait_for_socket(lay.socket_path)
            for _ in range(200):
                status, device = await daemon.get(f"/v1/devices/{eid.hex()}")
                if device.get("last_contact") is not None and device.get("session") is not None:
                    break
                await asyncio.sleep(0.05)
            assert device["link"] == "serial" and device["last_contact"] is not None, device
            status, body = await daemon.get("/v1/status")
            assert body["links"]["serial"] == pty_pair[0]
        finally:
            assert stop_daemon(daemon) == 0


async def test_an_eim_push_is_persisted_before_it_is_acknowledged_and_waits_for_the_device(
        workdir: Path, pki: RspPki) -> None:
    inject_port = free_tcp_port()
    # the gateway's inject endpoint borrows a TLS server credential of the test PKI (127.0.0.1)
    lay = layout(workdir, [1], extra=f'[northbound.inject]\nlisten = "127.0.0.1"\nport = {inject_port}\n'
                                     f'tls_cert_file = "{pki.eim_tls.cert_path}"\n',
                 credentials_extra=f'[tls]\ninject_key_file = "{pki.eim_tls.key_path}"\n')
    eid = make_eid(1)
    package = {"euiccPackageSigned": {"eimId": "eim.test", "eidValue": eid, "counterValue": 1,
                                      "eimTransactionId": b"\x0a\x0b",
                                      "euiccPackage": ("psmoList", [("listProfileInfo", {})])},
               "eimSignature": bytes(64)}
    body = codec.encode("TransferEimPackageRequest", ("euiccPackageRequest", package))
    daemon = start_daemon(lay)
    try:
        daemon.wait_notify("READY=1")
        await wait_for_socket(lay.socket_path)
        ctx = ssl.create_default_context(cafile=str(pki.tls_trust_path))
        async with aiohttp.ClientSession() as session:
            async with session.post(f"https://127.0.0.1:{inject_port}/gsma/rsp2/asn1", data=body, ssl=ctx,
                                    headers={"Content-Type": "application/x-gsma-rsp-asn1",
                                             "X-Admin-Protocol": "gsma/rsp/v2.1.0"}) as resp:
                assert resp.status == 200
                answer = await resp.read()
        assert codec.decode("TransferEimPackageResponse", answer) == ("eimPackageReceived", None)
        status, queue = await daemon.get("/v1/queue")
        assert [(e["eid"], e["key"]) for e in queue["inbox"]] == [(eid.hex(), "eim:eim.test/tx:0a0b")]
        assert (queue["outbox"], queue["outbox_usage"]["level"]) == ([], "ok")
    finally:
        assert stop_daemon(daemon) == 0
    with Store.open(lay.db) as store:
        entry = store.inbox.find(eid, "eim:eim.test/tx:0a0b")
        assert entry is not None and entry.payload == body


async def test_policies_sit_in_front_of_the_runtime_a_moved_card_is_quarantined(workdir: Path, pki: RspPki) -> None:
    lay = layout(workdir, [1])
    eid = make_eid(1)
    async with device_on_the_daemon(lay, SoftEuicc(pki, eid),
                                    status=Agent.make_status(eid, imei="356938035643809")) as (daemon, agent):
        first = await agent.run_session()
        assert first.error is None and first.idle_after_s is not None
        status, device = await daemon.get(f"/v1/devices/{eid.hex()}")
        assert device["imei"] == "356938035643809" and device["quarantined"] is False   # bound on first report

        agent.status = dataclasses.replace(agent.status, imei="490154203237518")        # the card moved
        second = await agent.run_session()
        assert second.error is not None and "quarantined" in second.error.text
        status, device = await daemon.get(f"/v1/devices/{eid.hex()}")
        assert device["quarantined"] is True
        assert ("quarantine", "imei-mismatch") in [(r["operation"], r["result"]) for r in device["audit"]]
        status, body = await daemon.get("/v1/status")
        assert [a["kind"] for a in body["alarms"]] == ["imei-mismatch"]
        status, metrics = await daemon.get("/metrics")
        assert 'ipae_gateway_policy{family="alarms",key="imei-mismatch"} 1' in metrics

        released = await api_request(lay.socket_path, "POST", f"/v1/devices/{eid.hex()}/release",
                                     json_body={"rebind": "490154203237518"})
        assert released[0] == 200
        status, body = await daemon.get("/v1/status")
        assert body["alarms"] == []
        third = await agent.run_session()
        assert third.error is None and third.idle_after_s is not None
        status, device = await daemon.get(f"/v1/devices/{eid.hex()}")
        assert device["quarantined"] is False and device["imei"] == "490154203237518"


async def test_a_pushed_package_persisted_before_a_crash_reaches_the_engine_at_the_next_start(workdir: Path) -> None:
    lay = layout(workdir, [1])
    eid = make_eid(1)
    package = {"euiccPackageSigned": {"eimId": "eim.test", "eidValue": eid, "counterValue": 1,
                                      "eimTransactionId": b"\x0c\x0d",
                                      "euiccPackage": ("psmoList", [("listProfileInfo", {})])},
               "eimSignature": bytes(64)}
    body = codec.encode("TransferEimPackageRequest", ("euiccPackageRequest", package))
    lay.db.parent.mkdir(parents=True)
    with Store.open(lay.db) as store:      # what the inject endpoint committed before the crash
        store.devices.register(eid, "coap", "dev1", now=1.0)
        store.inbox.enqueue(eid, "eim:eim.test/tx:0c0d", "eim-package", body, origin="eim.test", now=1.0)
    daemon = start_daemon(lay)
    try:
        daemon.wait_notify("READY=1")
        await wait_for_socket(lay.socket_path)
        status, device = await daemon.get(f"/v1/devices/{eid.hex()}")
        assert any(r["operation"] == "eimPackage" and "push" in json.dumps(r["detail"]) for r in device["audit"]), \
            device["audit"]
        assert device["session"] is not None
    finally:
        assert stop_daemon(daemon) == 0


async def test_audit_records_past_the_configured_retention_are_removed_at_start_and_the_rest_kept(
        workdir: Path) -> None:
    lay = layout(workdir, [1], extra="[store]\naudit_retention_days = 30\n")
    eid = make_eid(1)
    now = time.time()
    lay.db.parent.mkdir(parents=True)
    with Store.open(lay.db) as store:
        for age_days, operation in ((400, "enable"), (31, "disable"), (29, "delete"), (1, "download")):
            store.audit.append(time=now - age_days * 86400, operation=operation, result="ok", eid=eid)
    daemon = start_daemon(lay)
    try:
        daemon.wait_notify("READY=1")
        await wait_for_socket(lay.socket_path)
        for _ in range(100):
            status, body = await daemon.get(f"/v1/audit?eid={eid.hex()}")
            kept = sorted(r["operation"] for r in body["records"])
            if "enable" not in kept:
                break
            await asyncio.sleep(0.05)
    finally:
        assert stop_daemon(daemon) == 0
    assert kept == ["delete", "download"]


async def test_sigterm_with_a_backhaul_that_hangs_drains_within_the_grace_and_idles_the_waiting_device(
        workdir: Path, pki: RspPki) -> None:
    silent = socket.create_server(("127.0.0.1", 0))          # accepts TCP, never speaks TLS
    port = silent.getsockname()[1]
    lay = layout(workdir, [1], extra=f'[northbound]\neim_fqdn = "127.0.0.1"\neim_port = {port}\n')
    lay.config.write_text(lay.config.read_text().replace("shutdown_grace_s = 5.0", "shutdown_grace_s = 1.0"))
    eid = make_eid(1)
    try:
        async with device_on_the_daemon(lay, SoftEuicc(pki, eid)) as (daemon, agent):
            session = asyncio.create_task(agent.run_session())
            for _ in range(200):
                status, body = await daemon.get("/v1/sessions")
                if body["pending_exchanges"] == 1:
                    break
                await asyncio.sleep(0.05)
            assert body["pending_exchanges"] == 1                 # waiting on GetEimPackage to the silent eIM
            began = time.monotonic()
            daemon.signal(signal.SIGTERM)
            report = await asyncio.wait_for(session, 20)
            assert report.idle_after_s == 60 and report.error is None   # come back later, not an error
            assert await asyncio.to_thread(daemon.process.wait, 20) == 0
            assert time.monotonic() - began < 8
    finally:
        silent.close()
    with Store.open(lay.db) as store:
        store.check()


async def test_a_broker_that_comes_up_after_the_gateway_is_connected_in_the_background(
        workdir: Path, pki: RspPki) -> None:
    broker_port = free_tcp_port()
    gateway_password, device_password = "gw-pass-" + "a" * 16, "dev-pass-" + "b" * 16
    lay = layout(workdir, [1], extra=f'[links.mqtt]\nenabled = true\nbroker_host = "127.0.0.1"\n'
                                     f'broker_port = {broker_port}\ntls = false\nallow_plain_lab = true\n'
                                     f'username = "ipae-gateway"\n',
                 credentials_extra=f'[mqtt]\npassword = "{gateway_password}"\n')
    eid = make_eid(2)
    fleet = lay.directory / "devices.d" / "fleet.toml"
    fleet.write_text(fleet.read_text() + f'[[device]]\neid = "{eid.hex()}"\nlink = "mqtt"\nidentity = "mq2"\n')
    daemon = start_daemon(lay)
    try:
        daemon.wait_notify("READY=1")                   # CoAP devices are served meanwhile
        await wait_for_socket(lay.socket_path)
        status, body = await daemon.get("/v1/status")
        assert body["links"]["mqtt"].endswith("(connecting)") and "coap" in body["links"]

        registry = DeviceRegistry([DeviceCredential("mq2", eid, device_password.encode())])
        async with demo.mosquitto_broker(workdir / "broker", [("ipae-gateway", gateway_password),
                                                               ("mq2", device_password)],
                                          acl_text("ipae-gateway", registry), port=broker_port):
            for _ in range(300):
                status, body = await daemon.get("/v1/status")
                if not body["links"]["mqtt"].endswith("(connecting)"):
                    break
                await asyncio.sleep(0.1)
            assert body["links"]["mqtt"] == f"mqtt://127.0.0.1:{broker_port}"
            transport = MqttAgentTransport(MqttConfig(host="127.0.0.1", port=broker_port, username="mq2",
                                                      password=device_password, client_id="agent-mq2"), eid)
            try:
                report = await Agent(Agent.make_status(eid), SoftEuicc(pki, eid), transport).run_session()
            finally:
                await transport.close()
            assert report.error is None and report.idle_after_s is not None
    finally:
        assert stop_daemon(daemon) == 0


def test_a_coap_port_held_by_another_program_is_refused_with_exit_2_naming_the_key(workdir: Path) -> None:
    lay = layout(workdir, [1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", lay.coap_port))
        daemon = start_daemon(lay)
        assert daemon.process.wait(30) == 2
        err = daemon.stderr()
        stop_daemon(daemon)
    assert "links.coap.port" in err and "cannot listen" in err and "Traceback" not in err
