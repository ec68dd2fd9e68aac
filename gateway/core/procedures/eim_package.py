"""EuiccPackageRequest (SGP.32 §2.11.1, §3.3): PSMOs and eCOs signed by the eIM.

Theory of operation. The package is relayed to the eUICC as the exact bytes the eIM signed
(ES10b LoadEuiccPackage); the eUICC's signed EuiccPackageResult comes back as the exact
bytes to return. When the package enables or disables a Profile (or rolls back), the batch
asks the device to refresh after it (SGP.32 §3.3.1: without it the modem keeps using the
old Profile).

    INITIAL --start--> LOADING            [LoadEuiccPackage] (+ refresh)
    LOADING --device--> DONE               the EuiccPackageResult
    LOADING --device(lost/error)--> RECOVERING   [RetrieveNotificationsList(euiccPackageResults)]
    RECOVERING --device--> DONE            the result the eUICC kept, or an error result

RECOVERING is the crash/lost-batch path: the package may have run, so it is never sent
again (a replay would be refused by the counter, and that refusal must not become a second
result); the eUICC keeps every EuiccPackageResult until the IPA removes it after the eIM
acknowledged it, so the one matching this package's eimId and counter is the answer. When
none matches, the package did not run: the eIM gets eimPackageResultResponseError.
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
from gateway.errors import DecodeError
from gateway.spec import codec, signed, tlv
from gateway.spec.es10b import decode_response

LOADING = "LOADING"
RECOVERING = "RECOVERING"

_REFRESHING_PSMOS = frozenset({"enable", "disable", "rollback"})


def package_facts(raw: bytes) -> dict[str, Any]:
    """eimId, counter, transaction id and operation names of an EuiccPackageRequest."""
    value = codec.decode("EuiccPackageRequest", raw)
    s = value["euiccPackageSigned"]
    kind, items = s["euiccPackage"]
    return {"eim_id": s["eimId"], "counter": int(s["counterValue"]), "tid": s.get("eimTransactionId"),
            "eid": bytes(s["eidValue"]), "ops": [name for name, _ in items], "list": kind}


def error_result(eim_transaction_id: bytes | None, code: int = 127) -> bytes:
    """EimPackageResultResponseError for a package the eUICC did not run (SGP.32 §6.3)."""
    value: dict[str, Any] = {"eimPackageResultErrorCode": code}
    if eim_transaction_id is not None:
        value["eimTransactionId"] = eim_transaction_id
    return codec.encode("EimPackageResultResponseError", value)


class EimPackage(Procedure):
    KIND = "eim_package"
    TABLE = {
        (INITIAL, START): row("_start", LOADING),
        (LOADING, DEVICE): row("_loaded", DONE, RECOVERING),
        (RECOVERING, DEVICE): row("_recovered", DONE),
    }

    def _start(self, env: Env, _: object) -> tuple[str, list[Output]]:
        raw: bytes = self.ctx["request"]
        facts = package_facts(raw)
        if facts["eid"] != env.eid:
            raise DecodeError("the package names another EID", type_name="EuiccPackageRequest")
        self.ctx.update(counter=facts["counter"], tid=facts["tid"], ops=facts["ops"])
        refresh = env.config.refresh if _REFRESHING_PSMOS & set(facts["ops"]) else None
        return LOADING, [DeviceWork((Call("LoadEuiccPackage", raw),), refresh)]

    def _loaded(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        assert isinstance(answer, DeviceAnswer)
        reply = answer.replies[0] if answer.replies else None
        if reply is None or reply.sw != 0x9000 or not reply.data:
            # lost batch, lost response or an error status: the package may have run; ask
            # the eUICC for the result it keeps, never send the package again
            why = answer.stopped or (f"SW {reply.sw:04X}" if reply is not None else "no answer")
            retrieve = es10.retrieve_notifications_list(euicc_package_results=True)
            return RECOVERING, [Note("euiccPackage", "recovering", why),
                                DeviceWork((Call("RetrieveNotificationsList", retrieve),))]
        return DONE, self._result(reply.data)

    def _recovered(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        assert isinstance(answer, DeviceAnswer)
        if not answer.replies or answer.replies[0].sw != 0x9000:
            raise DecodeError("RetrieveNotificationsList failed during recovery", type_name="EuiccPackageResult")
        for r in es10.retrieved_list(answer.replies[0].data).package_results:
            if r.eim_id == self.ctx["eim_id"] and r.counter == self.ctx["counter"]:
                return DONE, self._result(r.raw)
        return DONE, [Note("euiccPackage", "not-run", "the eUICC holds no result for the package"),
                      Finish("failed", "package not run", {"error": error_result(self.ctx.get("tid"))})]

    def _result(self, raw: bytes) -> list[Output]:
        node = tlv.read_single(raw)
        if node.tag != signed.TAG_EUICC_PACKAGE_RESULT:
            raise DecodeError(f"tag {node.tag:X} is not an EuiccPackageResult", type_name="EuiccPackageResult")
        result = es10.euicc_package_result(raw)
        ok = decode_response("LoadEuiccPackage", raw)[0] == "euiccPackageResultSigned"
        outcome = "ok" if ok else "failed"
        return [Note("euiccPackage", outcome, ",".join(self.ctx.get("ops", []))),
                Finish(outcome, "", {"epr": raw, "seq": result.seq_number})]

    def on_error(self, env: Env, previous: str, why: str) -> list[Output]:
        return [Note("euiccPackage", "failed", why),
                Finish("failed", why, {"error": error_result(self.ctx.get("tid"))})]
