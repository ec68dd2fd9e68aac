"""TransferEimPackage (SGP.32 §5.14.1): the eIM pushes to the IPA's inject endpoint.

A queued package, or the acknowledgements owed for notifications, is POSTed in the ASN.1
binding (or the JSON one, `inject_binding="json"`) to the configured inject URL (the gateway's gateway.backhaul.inject_server). The
IPA's answer is processed like a provided result: eimPackageReceived marks the package
delivered (its result comes later with ProvideEimPackageResult), a result is verified and
stored at once. A push that fails leaves the package queued for the next GetEimPackage.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from gateway.backhaul.http import ASN1_CONTENT_TYPE, ESIPA_ASN1_PATH, ESIPA_JSON_PATH_PREFIX, HttpReply, Server
from gateway.errors import DecodeError, GatewayError
from gateway.spec import esipa, esipa_json
from hil.peers.eim import wire
from hil.peers.eim.model import Device, Package

if TYPE_CHECKING:
    from hil.peers.eim.service import Eim

BINDINGS = ("asn1", "json")
FAILURES = ("push failed", "undecodable", "answered")


async def push(eim: Eim, device: Device, package: Package) -> str:
    """Push one package with TransferEimPackage; what happened, in words."""
    if eim.inject_url is None:
        return "no inject endpoint configured"
    outcome = await _transfer(eim, device, (package.kind, package.payload))
    package.pushed = outcome
    if outcome == "eimPackageReceived" and package.pending:
        package.state = "delivered"
        package.deliveries += 1
    return outcome


async def _post(eim: Eim, request: tuple[str, Any]) -> HttpReply:
    assert eim.inject_url is not None
    server = Server(eim.inject_url, eim.inject_trust)
    if eim.inject_binding == "json":
        body = wire.encode_json("TransferEimPackage", request, request=True)
        path = ESIPA_JSON_PATH_PREFIX + esipa.FUNCTIONS["TransferEimPackage"].json_name
        return await eim.client().post_json(server, path, body)
    body = wire.encode_asn1("transferEimPackageRequest", request)
    return await eim.client().post(server, ESIPA_ASN1_PATH, body, ASN1_CONTENT_TYPE, accept=ASN1_CONTENT_TYPE)


def _answer(eim: Eim, body: bytes) -> tuple[str, Any]:
    if eim.inject_binding == "json":
        return "transferEimPackageResponse", esipa_json.decode_response("TransferEimPackage", body)
    return wire.decode_asn1(body)


async def _transfer(eim: Eim, device: Device, request: tuple[str, Any]) -> str:
    try:
        reply = await _post(eim, request)
    except GatewayError as exc:
        return f"push failed: {exc}"
    if not reply.body:
        return "pushed (no answer body)"
    try:
        alternative, value = _answer(eim, reply.body)
    except DecodeError as exc:
        return f"undecodable answer: {exc}"
    if alternative != "transferEimPackageResponse":
        return f"answered with {alternative}"
    kind = str(value[0])
    if kind in ("euiccPackageResult", "ePRAndNotifications", "ipaEuiccDataResponse"):
        acks = await eim.take_result(device, value)
        if acks:
            device.pending_acks.extend(a for a in acks if a not in device.pending_acks)
            push_acknowledgements_later(eim, device)
    return kind


def push_acknowledgements_later(eim: Eim, device: Device) -> None:
    """Send the acknowledgements owed to `device` in a TransferEimPackage of their own, soon."""
    if eim.inject_url is None or not device.pending_acks:
        return
    task = asyncio.get_running_loop().create_task(_push_acknowledgements(eim, device))
    eim.background.add(task)
    task.add_done_callback(eim.background.discard)


async def _push_acknowledgements(eim: Eim, device: Device) -> None:
    acks = list(device.pending_acks)
    outcome = await _transfer(eim, device, ("eimAcknowledgements", acks))
    if not outcome.startswith(FAILURES):
        device.pending_acks[:] = [a for a in device.pending_acks if a not in acks]
