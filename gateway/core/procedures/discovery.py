"""eIM discovery (SGP.32 §3.5, §5.9.18): learn the device's eIMs from its eUICC.

Theory of operation. The eUICC holds the eIM configuration (eimId, eimFqdn, supported
protocols, TLS trust, indirect-download flag); the IPA reads it with
GetEimConfigurationData. An eUICC without any eIM gets the operator's configured initial
eIM with AddInitialEim, then the configuration is read again. A device may have several
eIMs: the session polls each one.

    INITIAL --start--> READING            [GetEimConfigurationData]
    READING --device--> DONE              eIMs found (or none, and no initial eIM configured)
    READING --device--> ADDING            [AddInitialEim, GetEimConfigurationData]
    ADDING --device--> DONE
"""

from __future__ import annotations

from typing import Any

from gateway.core import es10
from gateway.core.procedures.base import (
    DEVICE,
    DONE,
    INITIAL,
    START,
    Call,
    DeviceAnswer,
    DeviceWork,
    Env,
    Finish,
    Note,
    Output,
    Procedure,
    row,
)
from gateway.errors import RemoteProtocolError
from gateway.spec import codec
from gateway.spec.apdu import sw_error
from gateway.spec.es10b import decode_response

READING = "READING"
ADDING = "ADDING"


def eim_summary(config: dict[str, Any]) -> dict[str, Any]:
    """What the session keeps of one EimConfigurationData (plain CBOR-storable values)."""
    out: dict[str, Any] = {"eimId": str(config["eimId"])}
    if "eimFqdn" in config:
        out["eimFqdn"] = str(config["eimFqdn"])
    if "indirectProfileDownload" in config:
        out["indirectProfileDownload"] = True
    if "trustedPublicKeyDataTls" in config:
        kind, value = config["trustedPublicKeyDataTls"]
        if kind == "trustedCertificateTls":
            out["tlsTrust"] = ["certificate", bytes(value)]
        elif kind == "trustedEimPkTls":
            out["tlsTrust"] = ["publicKey", codec.encode("SubjectPublicKeyInfo", value)]
    return out


class Discovery(Procedure):
    KIND = "discovery"
    REPEATABLE = frozenset({READING})
    TABLE = {
        (INITIAL, START): row("_start", READING),
        (READING, DEVICE): row("_read", DONE, ADDING),
        (ADDING, DEVICE): row("_added", DONE),
    }

    def _start(self, env: Env, _: object) -> tuple[str, list[Output]]:
        return READING, [DeviceWork((Call("GetEimConfigurationData", es10.get_eim_configuration_data()),))]

    def _read(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        eims = _configs(answer, 0)
        initial = env.config.initial_eim
        if not eims and initial is not None and not self.ctx.get("added"):
            self.ctx["added"] = True
            calls = (Call("AddInitialEim", es10.add_initial_eim([dict(initial)])),
                     Call("GetEimConfigurationData", es10.get_eim_configuration_data()))
            return ADDING, [DeviceWork(calls)]
        return DONE, self._done(eims)

    def _added(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        assert isinstance(answer, DeviceAnswer)
        if not answer.replies or answer.replies[0].sw != 0x9000:
            raise RemoteProtocolError("AddInitialEim was not executed")
        kind, value = decode_response("AddInitialEim", answer.replies[0].data)
        if kind != "addInitialEimOk":
            raise RemoteProtocolError(f"AddInitialEim refused: {value}")
        added = str((env.config.initial_eim or {}).get("eimId"))
        return DONE, [Note("addInitialEim", "ok", added)] + self._done(_configs(answer, 1))

    def _done(self, eims: list[dict[str, Any]]) -> list[Output]:
        summary = [eim_summary(e) for e in eims]
        return [Note("eimDiscovery", "ok", ",".join(e["eimId"] for e in summary)),
                Finish("ok", "", {"eims": summary})]


    def on_error(self, env: Env, previous: str, why: str) -> list[Output]:
        return [Note("eimDiscovery", "failed", why), Finish("failed", why)]


def _configs(answer: object, index: int) -> list[dict[str, Any]]:
    assert isinstance(answer, DeviceAnswer)
    if len(answer.replies) <= index:
        raise RemoteProtocolError(f"GetEimConfigurationData not answered ({answer.stopped})")
    reply = answer.replies[index]
    if reply.sw != 0x9000:
        raise sw_error(reply.sw)
    return es10.eim_configurations(reply.data)
