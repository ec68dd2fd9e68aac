"""The eIM's state file (`--state`): what must survive a restart of a test eIM.

A real eIM never signs two packages for one eUICC with the same counter value: after a
restart without its counters it would sign counter 1 again and the eUICC would refuse every
package as a replay. So the file keeps, per EID, the counter, the association token, the
verified eUICC certificate, the queue (packages as their DER) and everything received; relayed
download sessions are not kept (the IPA starts a download again). The file is JSON, written
atomically (temporary file, then rename) after each change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.spec import codec
from hil import rspcrypto
from hil.peers import common
from hil.peers.eim.model import Device, Package, Record
from hil.peers.eim.wire import Embedded

if TYPE_CHECKING:
    from hil.peers.eim.service import Eim

VERSION = 1
PAYLOAD_TYPES = {"euiccPackageRequest": "EuiccPackageRequest", "ipaEuiccDataRequest": "IpaEuiccDataRequest",
                 "profileDownloadTriggerRequest": "ProfileDownloadTriggerRequest"}


def _hex(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _package(p: Package) -> dict[str, Any]:
    der = p.payload.raw if isinstance(p.payload, Embedded) else codec.encode(PAYLOAD_TYPES[p.kind], p.payload)
    return {"id": p.package_id, "kind": p.kind, "tid": p.eim_transaction_id.hex(), "request": p.request,
            "der": der.hex(), "counter": p.counter, "state": p.state, "deliveries": p.deliveries,
            "pushed": p.pushed, "result": p.result}


def _record(r: Record) -> dict[str, Any]:
    return {"at": r.received_at, "kind": r.kind, "verified": r.verified, "detail": r.detail,
            "seq": r.seq_number, "package": r.package_id, "der": r.der.hex(), "decoded": r.decoded}


def save(eim: Eim, path: Path) -> None:
    devices = []
    for d in eim.devices.values():
        devices.append({
            "eid": d.eid.hex(), "counter": d.counter, "associationToken": d.association_token,
            "certificate": common.certificate_der(d.certs.certificate).hex() if d.certs else None,
            "eumCertificate": common.certificate_der(d.certs.eum_certificate).hex() if d.certs else None,
            "packages": [_package(p) for p in d.packages], "results": [_record(r) for r in d.results],
            "notifications": [_record(n) for n in d.notifications], "stateChanges": d.state_changes,
            "seen": d.seen, "pendingAcks": d.pending_acks})
    state = {"version": VERSION, "nextPackage": eim.next_package, "devices": devices,
             "unassigned": [_record(r) for r in eim.unassigned]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, default=_hex))
    os.replace(tmp, path)


def _load_package(eid: bytes, obj: dict[str, Any]) -> Package:
    der = bytes.fromhex(obj["der"])
    kind = obj["kind"]
    payload = Embedded("EuiccPackageRequest", der) if kind == "euiccPackageRequest" else \
        codec.decode(PAYLOAD_TYPES[kind], der)
    return Package(obj["id"], eid, kind, bytes.fromhex(obj["tid"]), obj["request"], payload, obj["counter"],
                   obj["state"], obj["deliveries"], obj["pushed"], obj["result"])


def _load_record(obj: dict[str, Any]) -> Record:
    return Record(obj["at"], obj["kind"], obj["verified"], obj["detail"], obj["seq"], obj["package"],
                  bytes.fromhex(obj["der"]), obj["decoded"])


def load(eim: Eim, path: Path) -> None:
    """Restore what `save` wrote; a file of another version or shape is a ValueError."""
    try:
        state = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise ValueError(f"{path}: not an eIM state file of version {VERSION}")
    try:
        eim.next_package = state["nextPackage"]
        for obj in state["devices"]:
            eid = bytes.fromhex(obj["eid"])
            certs = None
            if obj["certificate"] is not None:
                certs = common.verify_euicc_certificates(bytes.fromhex(obj["certificate"]),
                                                         bytes.fromhex(obj["eumCertificate"]), eim.pki.ci.cert)
            eim.devices[eid] = Device(
                eid, obj["counter"], obj["associationToken"], certs,
                [_load_package(eid, p) for p in obj["packages"]], [_load_record(r) for r in obj["results"]],
                [_load_record(n) for n in obj["notifications"]], obj["stateChanges"], obj["seen"],
                obj["pendingAcks"])
        eim.unassigned = [_load_record(r) for r in state["unassigned"]]
    except (KeyError, TypeError, ValueError, rspcrypto.RspCryptoError) as exc:
        raise ValueError(f"{path}: unusable eIM state: {exc!r}") from exc
