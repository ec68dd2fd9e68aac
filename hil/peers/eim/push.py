"""TransferEimPackage (SGP.32 §5.14.1): the eIM pushes to the IPA's inject endpoint.

A queued package, or the acknowledgements owed for notifications, is POSTed in the ASN.1
binding to the configured inject URL (the gateway's gateway.backhaul.inject_server). The
IPA's answer is processed like a provided result: eimPackageReceived marks the package
delivered (its result comes later with ProvideEimPackageResult), a result is verified and
stored at once. A push that fails leaves the package queued for the next GetEimPackage.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from gateway.backhaul.http import ASN1_CONTENT_TYPE, ESIPA_ASN1_PATH, Server
from gateway.errors import DecodeError, GatewayError
from hil.peers.eim import wire
from hil.peers.eim.model import Device, Package

if TYPE_CHECKING:
    from hil.peers.eim.service import Eim

async def push(eim: Eim, package: Package) -> str:
    """Push one package with TransferEimPackage; what happened, in words."""
    if eim.inject_url is None:
        return "no inject endpoint configured"
    outcome = await _transfer(eim, (package.kind, package.payload))
    package.pushed = outcome
    if outcome == "eimPackageReceived" and package.pending:
        package.state = "delivered"
        package.deliveries += 1
    return outcome

async def _transfer(eim: Eim, request: tuple[str, Any]) -> str:
    assert eim.inject_url is not None
    body = wire.encode_asn1("transferEimPackageRequest", request)
    try:
        reply = await eim.client().post(Server(eim.inject_url, eim.inject_trust), ESIPA_ASN1_PATH, body,
                                        ASN1_CONTENT_TYPE, accept=ASN1_CONTENT_TYPE)
    except GatewayError as exc:
        return f"push failed: {exc}"
    if not reply.body:
        return "pushed (no answer body)"
    try:
        alternative, value = wire.decode_asn1(reply.body)
    except DecodeError as exc:
        return f"undecodable answer: {exc}"
    if alternative != "transferEimPackageResponse":
        return f"answered with {alternative}"
    kind = value[0]
    if kind in ("euiccPackageResult", "ePRAndNotifications", "ipaEuiccDataResponse"):
        eid = _eid_of_request(eim, request)
        device = eim.devices.get(eid) if eid is not None else None
        if device is not None:
            acks = await eim.take_result(device, value)
            if acks:
                device.pending_acks.extend(a for a in acks if a not in device.pending_acks)
                push_acknowledgements_later(eim, device)
    return str(kind)

def _eid_of_request(eim: Eim, request: tuple[str, Any]) -> bytes | None:
    kind, payload = request
    for device in eim.devices.values():
        if any(p.payload is payload for p in device.packages):
            return device.eid
    return None

def push_acknowledgements_later(eim: Eim, device: Device) -> None:
    if eim.inject_url is None or not device.pending_acks:
        return
    task = asyncio.get_running_loop().create_task(_push_acknowledgements(eim, device))
    eim.background.add(task)
    task.add_done_callback(eim.background.discard)

async def _push_acknowledgements(eim: Eim, device: Device) -> None:
    acks = list(device.pending_acks)
    outcome = await _transfer(eim, ("eimAcknowledgements", acks))
    if not outcome.startswith(("push failed", "undecodable", "answered")):
        device.pending_acks[:] = [a for a in device.pending_acks if a not in acks]
