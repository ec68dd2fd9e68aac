"""The eIM over HTTPS: ESipa in both bindings (SGP.32 §6.1-6.3) and the admin API.

ESipa:
    POST /gsma/rsp2/asn1                 application/x-gsma-rsp-asn1, DER of
                                         EsipaMessageFromIpaToEim -> DER of ...FromEimToIpa
    POST /gsma/rsp2/esipa/<function>     application/json (gateway.spec.esipa_json)
An answer without a body (HandleNotification) is 204. A body that does not decode is 400
(the bindings define no error message for it), a wrong content type 415, an unknown JSON
function 404, over 1 MB 413, an X-Admin-Protocol other than gsma/rsp/vX.Y.Z 400 (v1.0.0 and
v2.x values are both accepted).

Admin (JSON; EIDs as 32 digits):
    POST /admin/eids/<eid>                 register: {counterValue?, associationToken?,
                                           euiccCertificate? (base64 DER), eumCertificate?}
    GET  /admin/eids                       every EID with its queue and what it received
    GET  /admin/eids/<eid>                 one EID (packages, results, notifications, ...)
    POST /admin/eids/<eid>/psmo            {"operations": [{"op": "enable", ...}, ...]}
    POST /admin/eids/<eid>/eco             {"operations": [{"op": "addEim", ...}, ...]}
    POST /admin/eids/<eid>/ipa-euicc-data  {"tags": ["euiccCertificate", ...]}
    POST /admin/eids/<eid>/download        {"activationCode": "1$host:port$ID"} | {"contactDefaultSmdp": true}
    GET  /admin/eids/<eid>/results         results received (each once, verified or why not)
    GET  /admin/eids/<eid>/notifications
    GET  /admin/notifications              notifications no EID could be given to
    GET  /admin/eim                        this eIM's id, address and EimConfigurationData (hex DER)
The queueing calls answer the package and, with an inject endpoint, what the push did.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from gateway.spec import codec, esipa, esipa_json
from hil.peers import common
from hil.peers.eim import wire
from hil.peers.eim.model import Package
from hil.peers.eim.service import Eim

ADMIN_PROTOCOL = "gsma/rsp/v2.1.0"


def _check_protocol(request: web.Request) -> None:
    value = request.headers.get(esipa.ADMIN_PROTOCOL_HEADER)
    if value is not None and not esipa.admin_protocol_ok(value):
        raise web.HTTPBadRequest(text=f"bad {esipa.ADMIN_PROTOCOL_HEADER} {value!r}")


def make_app(eim: Eim) -> web.Application:
    headers = {esipa.ADMIN_PROTOCOL_HEADER: ADMIN_PROTOCOL}

    async def asn1(request: web.Request) -> web.StreamResponse:
        if not esipa.is_asn1_content_type(request.headers.get("Content-Type")):
            raise web.HTTPUnsupportedMediaType(text=f"the ASN.1 binding is {esipa.ASN1_CONTENT_TYPE}")
        _check_protocol(request)
        body = await common.read_body(request)
        try:
            alternative, value = wire.decode_asn1(body)
            answer = await eim.handle(alternative, value)
            if answer is None:
                return web.Response(status=204, headers=headers)
            der = wire.encode_asn1(*answer)
        except RemoteProtocolError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        except LocalProtocolError as exc:
            raise web.HTTPInternalServerError(text=str(exc)) from None
        return web.Response(body=der, content_type=esipa.ASN1_CONTENT_TYPE, headers=headers)

    async def json_binding(request: web.Request) -> web.StreamResponse:
        try:
            function = esipa_json.function_of_path(request.path)
        except DecodeError:
            raise web.HTTPNotFound(text="no such ESipa function") from None
        if not esipa.FUNCTIONS[function].from_ipa:
            raise web.HTTPNotFound(text=f"{function} is not served by an eIM")
        if request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(text="the JSON binding is application/json")
        _check_protocol(request)
        body = await common.read_body(request)
        try:
            alternative, value = wire.decode_json(function, body)
            answer = await eim.handle(alternative, value)
            if answer is None:
                return web.Response(status=204, headers=headers)
            out = wire.encode_json(function, answer[1])
        except RemoteProtocolError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        except LocalProtocolError as exc:
            raise web.HTTPInternalServerError(text=str(exc)) from None
        return web.Response(body=out, content_type="application/json", charset="utf-8", headers=headers)

    def device_of(request: web.Request, *, create: bool = False) -> Any:
        eid = common.parse_eid(request.match_info["eid"])
        device = eim.device(eid, create=create)
        if device is None:
            raise common.AdminError("unknown EID", status=404)
        return device

    async def register(request: web.Request) -> Any:
        obj = await common.admin_json(request)
        eid = common.parse_eid(request.match_info["eid"])
        device = eim.register(
            eid,
            counter=common.field_int(obj, "counterValue") if "counterValue" in obj else None,
            association_token=common.field_int(obj, "associationToken") if "associationToken" in obj else None,
            euicc_certificate=common.field_b64(obj, "euiccCertificate") if "euiccCertificate" in obj else None,
            eum_certificate=common.field_b64(obj, "eumCertificate") if "eumCertificate" in obj else None)
        return device.to_json()

    async def list_devices(request: web.Request) -> Any:
        return {"eids": [d.to_json() for d in eim.devices.values()]}

    async def get_device(request: web.Request) -> Any:
        return device_of(request).to_json()

    async def queued(package: Package) -> Any:
        out: dict[str, Any] = {"package": package.to_json()}
        if eim.inject_url is not None:
            out["push"] = await eim.push(package)
            out["package"] = package.to_json()
        return out

    def operations(obj: dict[str, Any]) -> list[Any]:
        ops = obj.get("operations")
        if not isinstance(ops, list):
            raise common.AdminError("'operations' must be a list")
        return ops

    async def queue_psmo(request: web.Request) -> Any:
        obj = await common.admin_json(request)
        eid = device_of(request, create=True).eid
        return await queued(eim.queue_euicc_package(eid, {"psmo": operations(obj)}))

    async def queue_eco(request: web.Request) -> Any:
        obj = await common.admin_json(request)
        eid = device_of(request, create=True).eid
        return await queued(eim.queue_euicc_package(eid, {"eco": operations(obj)}))

    async def queue_data_request(request: web.Request) -> Any:
        obj = await common.admin_json(request)
        eid = device_of(request, create=True).eid
        return await queued(eim.queue_ipa_euicc_data_request(eid, obj))

    async def queue_download(request: web.Request) -> Any:
        obj = await common.admin_json(request)
        eid = device_of(request, create=True).eid
        return await queued(eim.queue_profile_download(eid, obj))

    async def results(request: web.Request) -> Any:
        return {"results": [r.to_json() for r in device_of(request).results]}

    async def notifications(request: web.Request) -> Any:
        return {"notifications": [n.to_json() for n in device_of(request).notifications]}

    async def unassigned(request: web.Request) -> Any:
        return {"notifications": [n.to_json() for n in eim.unassigned]}

    async def identity(request: web.Request) -> Any:
        data = eim.own_configuration_data()
        return {"eimId": eim.eim_id, "eimFqdn": eim.fqdn,
                "eimConfigurationData": codec.encode("EimConfigurationData", data).hex()}

    app = web.Application(middlewares=[common.never_crash], client_max_size=common.MAX_BODY_BYTES)
    app.router.add_post(esipa.ASN1_PATH, asn1)
    app.router.add_post(esipa_json.JSON_PATH_PREFIX + "{function}", json_binding)
    app.router.add_post("/admin/eids/{eid}", common.admin_route(register))
    app.router.add_get("/admin/eids", common.admin_route(list_devices))
    app.router.add_get("/admin/eids/{eid}", common.admin_route(get_device))
    app.router.add_post("/admin/eids/{eid}/psmo", common.admin_route(queue_psmo))
    app.router.add_post("/admin/eids/{eid}/eco", common.admin_route(queue_eco))
    app.router.add_post("/admin/eids/{eid}/ipa-euicc-data", common.admin_route(queue_data_request))
    app.router.add_post("/admin/eids/{eid}/download", common.admin_route(queue_download))
    app.router.add_get("/admin/eids/{eid}/results", common.admin_route(results))
    app.router.add_get("/admin/eids/{eid}/notifications", common.admin_route(notifications))
    app.router.add_get("/admin/notifications", common.admin_route(unassigned))
    app.router.add_get("/admin/eim", common.admin_route(identity))
    return app
