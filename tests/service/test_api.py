"""The management API and the CLI against a running `ipae-gateway run`: tables and --json,
the audit log query and JSON-lines export, operator actions, errors, the TCP bearer token."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from daemon_support import (
    REPO,
    Daemon,
    Layout,
    free_tcp_port,
    free_udp_port,
    make_eid,
    start_daemon,
    stop_daemon,
    wait_for_socket,
)

from gateway.service.admin_cli import show_status
from gateway.spec import codec
from gateway.store import Store

TOKEN = "api-token-0123456789abcdef"
EARLIER = (int(time.time()) // 86400 - 1) * 86400.0   # yesterday 00:00 UTC: inside the audit retention


def pushed_package(eid: bytes) -> bytes:
    """A TransferEimPackageRequest the inject endpoint accepted (its signature is not checked here)."""
    package = {"euiccPackageSigned": {"eimId": "eim.test", "eidValue": eid, "counterValue": 1,
                                      "eimTransactionId": b"\x01\x02",
                                      "euiccPackage": ("psmoList", [("listProfileInfo", {})])},
               "eimSignature": bytes(64)}
    return codec.encode("TransferEimPackageRequest", ("euiccPackageRequest", package))


@pytest.fixture
async def daemon(workdir: Path) -> AsyncIterator[Daemon]:
    tcp_port = free_tcp_port()
    lay = Layout(workdir, free_udp_port(), workdir / "api.sock", [1, 2],
                 extra=f'tcp_listen = "127.0.0.1"\ntcp_port = {tcp_port}\n'
                       f'[policies.groups.site-a]\neids = ["{make_eid(1).hex()}", "{make_eid(2).hex()}"]\n',
                 credentials_extra=f'[api]\nbearer_token = "{TOKEN}"\n')
    lay.write()
    # an audit trail from an earlier run, written through the store as the daemon would
    lay.db.parent.mkdir(parents=True)
    with Store.open(lay.db) as store:
        store.devices.register(make_eid(1), "coap", "dev1", now=1000.0)
        store.audit.append(time=EARLIER + 1000, eid=make_eid(1), iccid="8949000000000000001", operation="EnableProfile",
                           result="ok", origin_eim="eim.test", origin_tx=b"\x01\x02", detail={"detail": "enabled"})
        store.audit.append(time=EARLIER + 2000, eid=make_eid(2), operation="DeleteProfile", result="ok")
        store.inbox.enqueue(make_eid(1), "eim:eim.test/tx:0102", "eim-package", pushed_package(make_eid(1)),
                            origin="eim.test", now=1000.0)
    d = start_daemon(lay)
    d.tcp_port = tcp_port  # type: ignore[attr-defined]
    try:
        d.wait_notify("READY=1")
        await wait_for_socket(lay.socket_path)
        yield d
    finally:
        assert stop_daemon(d) == 0


async def test_status_devices_and_queue_as_tables_and_json(daemon: Daemon) -> None:
    status = daemon.cli("status")
    assert status.returncode == 0, status.stderr
    assert "links:     coap coaps://" in status.stdout and "2 configured" in status.stdout
    assert "inbox 1" in status.stdout
    as_json = json.loads(daemon.cli("status", "--json").stdout)
    assert as_json["devices"] == 2 and as_json["store"]["inbox_open"] == 1

    devices = daemon.cli("devices")
    lines = devices.stdout.splitlines()
    assert lines[0].split() == ["EID", "NAME", "LINK", "IDENTITY", "STATE", "LAST", "CONTACT"]
    assert any(make_eid(2).hex() in line and "sensor 2" in line for line in lines[1:])

    queue = daemon.cli("queue")
    assert "inbox:  1 entries" in queue.stdout and "eim:eim.test/tx:0102" in queue.stdout
    queue_json = json.loads(daemon.cli("queue", "--json").stdout)
    assert queue_json["inbox"][0]["eid"] == make_eid(1).hex() and queue_json["outbox"] == []


async def test_the_audit_log_is_queried_filtered_and_exported_as_json_lines(daemon: Daemon) -> None:
    table = daemon.cli("audit")
    assert "EnableProfile" in table.stdout and "DeleteProfile" in table.stdout and "enabled" in table.stdout
    only = json.loads(daemon.cli("audit", "--json", "--eid", make_eid(2).hex()).stdout)
    assert [r["operation"] for r in only["records"]] == ["DeleteProfile"]
    only = json.loads(daemon.cli("audit", "--json", "--eid", make_eid(1).hex(), "--operation", "EnableProfile").stdout)
    assert [r["operation"] for r in only["records"]] == ["EnableProfile"]
    assert only["records"][0]["origin"] == {"eim_id": "eim.test", "transaction_id": "0102"}
    since = json.loads(daemon.cli("audit", "--json", "--since", str(EARLIER + 1500),
                                  "--until", str(EARLIER + 3000)).stdout)
    assert [r["operation"] for r in since["records"]] == ["DeleteProfile"]
    exported = daemon.cli("audit", "--jsonl", "--until", str(EARLIER + 3000))
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    day = datetime.fromtimestamp(EARLIER, timezone.utc).date().isoformat()
    assert [r["time_utc"] for r in records] == [f"{day}T00:16:40Z", f"{day}T00:33:20Z"]


async def test_device_detail_operator_actions_and_errors(daemon: Daemon) -> None:
    eid = make_eid(1).hex()
    detail = json.loads(daemon.cli("device", eid, "--json").stdout)
    assert detail["name"] == "sensor 1" and detail["inbox"][0]["key"] == "eim:eim.test/tx:0102"
    assert "EnableProfile" in daemon.cli("device", eid).stdout

    forgot = daemon.cli("device", eid, "--action", "forget")
    assert forgot.returncode == 0 and "forget accepted" in forgot.stdout
    status, body = await daemon.get("/v1/audit", {"eid": eid, "operation": "operator"})
    assert [r["result"] for r in body["records"]] == ["forget"]

    assert (await daemon.get("/v1/devices/zz"))[0] == 400
    status, body = await daemon.get(f"/v1/devices/{bytes(16).hex()}")
    assert status == 404 and "not a device" in body["error"]
    status, body = await daemon.post(f"/v1/devices/{eid}/explode")
    assert status == 404 and "unknown action" in body["error"]
    refused = daemon.cli("device", bytes(16).hex())
    assert refused.returncode == 1 and "404" in refused.stderr


async def test_metrics_are_prometheus_text(daemon: Daemon) -> None:
    text = daemon.cli("metrics").stdout
    assert "# TYPE ipae_gateway_round_trips_total counter" in text
    assert 'ipae_gateway_queue_depth{queue="inbox"} 1' in text
    assert "ipae_gateway_devices 2" in text


async def test_the_tcp_api_refuses_requests_without_the_bearer_token(daemon: Daemon) -> None:
    url = f"http://127.0.0.1:{daemon.tcp_port}/v1/status"  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 401
        async with session.get(url, headers={"Authorization": "Bearer wrong-token-000000"}) as resp:
            assert resp.status == 401
        async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200 and (await resp.json())["devices"] == 2
    token_file = daemon.layout.directory / "token"
    token_file.write_text(TOKEN + "\n")
    via_cli = daemon.cli("devices", "--json", "--url", f"http://127.0.0.1:{daemon.tcp_port}",  # type: ignore[attr-defined]
                         "--token-file", str(token_file))
    assert via_cli.returncode == 0 and len(json.loads(via_cli.stdout)["devices"]) == 2


def test_the_cli_says_when_the_daemon_is_not_running(workdir: Path) -> None:
    lay = Layout(workdir, free_udp_port(), workdir / "api.sock", [1])
    lay.write()
    done = subprocess.run([sys.executable, "-m", "gateway", "status", "--config", str(lay.config)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 3 and "cannot reach the gateway API" in done.stderr


async def test_group_operations_stream_progress_and_export_the_members_audit(daemon: Daemon) -> None:
    path = daemon.layout.socket_path
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session:
        async with session.post("http://gateway/v1/groups/site-a/quarantine", json=["site audit"]) as resp:
            assert resp.status == 400 and "JSON object" in (await resp.json())["error"]
        async with session.post("http://gateway/v1/groups/site-a/quarantine", json={"reason": "site audit"}) as resp:
            assert resp.status == 200
            lines = [json.loads(line) for line in (await resp.text()).splitlines()]
        assert lines[-1]["finished"] is True and lines[-1]["done"] == 2 and lines[-1]["failed"] == 0
        async with session.post("http://gateway/v1/groups/nowhere/retry") as resp:
            assert resp.status == 404
        async with session.get("http://gateway/v1/groups/site-a/audit") as resp:
            records = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert {(r["eid"], r["operation"]) for r in records if r["operation"] == "quarantine"} == {
        (make_eid(1).hex(), "quarantine"), (make_eid(2).hex(), "quarantine")}
    status, body = await daemon.get("/v1/devices")
    assert all(d["quarantined"] for d in body["devices"])
    released = daemon.cli("device", make_eid(1).hex(), "--action", "release")
    assert released.returncode == 0, released.stderr
    status, device = await daemon.get(f"/v1/devices/{make_eid(1).hex()}")
    assert device["quarantined"] is False


async def test_the_group_cli_runs_each_operation_on_the_members_and_shows_their_audit(daemon: Daemon) -> None:
    members = {make_eid(1).hex(), make_eid(2).hex()}
    quarantined = daemon.cli("group", "site-a", "quarantine", "--reason", "site audit")
    assert quarantined.returncode == 0, quarantined.stderr
    assert quarantined.stdout.strip() == "quarantine on group site-a: 2 done, 0 failed of 2 members"
    status, body = await daemon.get("/v1/devices")
    assert {d["eid"] for d in body["devices"] if d["quarantined"]} == members

    audit = daemon.cli("group", "site-a", "audit")
    assert audit.returncode == 0 and audit.stdout.count("quarantine") == 2
    records = [json.loads(line) for line in daemon.cli("group", "site-a", "audit", "--json").stdout.splitlines()]
    assert {r["eid"] for r in records if r["operation"] == "quarantine"} == members

    released = daemon.cli("group", "site-a", "release", "--forget-imei", "--json")
    assert released.returncode == 0, released.stderr
    progress = [json.loads(line) for line in released.stdout.splitlines()]
    assert progress[0]["done"] == 0 and progress[-1]["finished"] and progress[-1]["done"] == 2
    status, body = await daemon.get("/v1/devices")
    assert not any(d["quarantined"] for d in body["devices"])
    status, body = await daemon.get("/v1/audit", {"operation": "release"})
    assert {r["eid"] for r in body["records"]} == members
    assert all(r["detail"]["keep_binding"] is False for r in body["records"])

    retried = daemon.cli("group", "site-a", "retry")
    assert retried.returncode == 0 and "retry-failed on group site-a: 2 done" in retried.stdout
    unknown = daemon.cli("group", "nowhere", "reread-eim")
    assert unknown.returncode == 1 and "404" in unknown.stderr and "no device group 'nowhere'" in unknown.stderr


def test_status_names_an_outbox_at_its_bound_and_the_work_refused() -> None:
    data = {"store": {"inbox_open": 2, "outbox_pending": 9, "outbox_pending_bytes": 1340},
            "outbox": {"level": "full", "max_entries": 6, "holding_new_work": True}}
    assert "queues:    inbox 2, outbox 9 (1340 bytes) -- FULL (at most 6 messages, new work refused)" in show_status(data)
    data["outbox"] = {"level": "ok", "max_entries": 6, "holding_new_work": False}
    assert "outbox 9 (1340 bytes)\n" in show_status(data)
