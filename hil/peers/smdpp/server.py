"""The SM-DP+ over HTTPS: ES9+ JSON binding (SGP.22 §6.5) and the admin API.

ES9+: `POST /gsma/rsp2/es9plus/<function>` with `Content-Type: application/json`; bodies
are parsed by `gateway.spec.es9p` (the same dataclasses the gateway's client sends). A
refusal answers 200 with header.functionExecutionStatus {Failed, statusCodeData}; a body
that does not parse answers the same way with the format-error codes (it never reaches the
service); handleNotification answers 204. A wrong content type is 415, an unknown function
404, a body over 1 MB 413, an X-Admin-Protocol that is not gsma/rsp/vX.Y.Z 400.

Admin (plain JSON, for tests and demos):
    POST /admin/orders            {matchingId?, iccid?, size?, eid?, ttlS?, profileName?,
                                   notificationAddress?, replaceSessionKeys?} -> the order
                                   (with its activation code)
    GET  /admin/orders            every order and its state
    GET  /admin/orders/<orderId>
    GET  /admin/notifications     every notification received (verified or not)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.errors import DecodeError
from gateway.spec import es9p
from hil.peers import common
from hil.peers.smdpp import codes
from hil.peers.smdpp.codes import Refusal
from hil.peers.smdpp.service import SmdpPlus

ADMIN_PROTOCOL = "gsma/rsp/v2.2.0"
_ADMIN_PROTOCOL = re.compile(r"gsma/rsp/v\d+\.\d+\.\d+")

_FUNCTIONS: dict[str, tuple[Callable[[bytes], Any], str]] = {
    es9p.INITIATE_AUTHENTICATION: (es9p.InitiateAuthenticationRequest.from_json, "initiate_authentication"),
    es9p.AUTHENTICATE_CLIENT: (es9p.AuthenticateClientRequest.from_json, "authenticate_client"),
    es9p.GET_BOUND_PROFILE_PACKAGE: (es9p.GetBoundProfilePackageRequest.from_json, "get_bound_profile_package"),
    es9p.HANDLE_NOTIFICATION: (es9p.HandleNotificationRequest.from_json, "handle_notification"),
    es9p.CANCEL_SESSION: (es9p.CancelSessionRequest.from_json, "cancel_session"),
}


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8",
                        headers={es9p.ADMIN_PROTOCOL_HEADER: ADMIN_PROTOCOL})


def _failed(subject_code: str, reason_code: str, message: str) -> web.Response:
    header = es9p.ResponseHeader(es9p.FAILED, es9p.StatusCodeData(subject_code, reason_code,
                                                                  message=message[:500]))
    return _json(es9p.header_only_json(header))


def make_app(service: SmdpPlus) -> web.Application:
    async def es9plus(request: web.Request) -> web.StreamResponse:
        function = request.match_info["function"]
        entry = _FUNCTIONS.get(function)
        if entry is None:
            raise web.HTTPNotFound(text=f"no ES9+ function {function!r}")
        if request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(text="ES9+ bodies are application/json")
        protocol = request.headers.get(es9p.ADMIN_PROTOCOL_HEADER)
        if protocol is not None and not _ADMIN_PROTOCOL.fullmatch(protocol):
            raise web.HTTPBadRequest(text=f"bad {es9p.ADMIN_PROTOCOL_HEADER} {protocol!r}")
        body = await common.read_body(request)
        parse, method = entry
        try:
            req = parse(body)
        except DecodeError as exc:
            return _failed(*codes.MALFORMED, str(exc))
        try:
            result = getattr(service, method)(req)
        except Refusal as refusal:
            return _failed(refusal.subject_code, refusal.reason_code, refusal.message)
        if function == es9p.HANDLE_NOTIFICATION:
            return web.Response(status=es9p.HANDLE_NOTIFICATION_STATUS,
                                headers={es9p.ADMIN_PROTOCOL_HEADER: ADMIN_PROTOCOL})
        if result is None:
            return _json(es9p.header_only_json(es9p.SUCCESS_HEADER))
        return _json(result.to_json())

    async def create_order(request: web.Request) -> Any:
        obj = await common.admin_json(request)
        order = service.order_profile(
            matching_id=common.field_str(obj, "matchingId") if "matchingId" in obj else None,
            iccid=common.iccid_to_bytes(common.field_str(obj, "iccid")) if "iccid" in obj else None,
            size=common.field_int(obj, "size", 8 * 1024),
            eid=common.parse_eid(common.field_str(obj, "eid")) if obj.get("eid") else None,
            ttl_s=float(common.field_int(obj, "ttlS")) if "ttlS" in obj else None,
            profile_name=common.field_str(obj, "profileName") if "profileName" in obj else None,
            notification_address=common.field_str(obj, "notificationAddress", ""),
            replace_session_keys=obj.get("replaceSessionKeys") is True)
        return order.to_json(service.address)

    async def list_orders(request: web.Request) -> Any:
        return {"orders": [o.to_json(service.address) for o in service.orders.values()]}

    async def get_order(request: web.Request) -> Any:
        order = service.orders.get(request.match_info["order_id"])
        if order is None:
            raise common.AdminError("no such order", status=404)
        return order.to_json(service.address)

    async def list_notifications(request: web.Request) -> Any:
        return {"notifications": [n.to_json() for n in service.notifications]}

    app = web.Application(middlewares=[common.never_crash], client_max_size=common.MAX_BODY_BYTES)
    app.router.add_post(es9p.ES9P_PATH_PREFIX + "{function}", es9plus)
    app.router.add_post("/admin/orders", common.admin_route(create_order))
    app.router.add_get("/admin/orders", common.admin_route(list_orders))
    app.router.add_get("/admin/orders/{order_id}", common.admin_route(get_order))
    app.router.add_get("/admin/notifications", common.admin_route(list_notifications))
    return app
