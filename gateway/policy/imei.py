"""IMEI binding: an eUICC found in another device is quarantined until an operator decides.

Theory of operation. Each EID is bound to one IMEI: the one configured in
`[policies.imei] bindings`, else (mode "first-reported") the first one the device reports,
kept in the store registry (`Devices.bind_imei`). Every uplink's status goes through
`check_imei` BEFORE the engine sees the uplink:

- same IMEI, or nothing to compare (no IMEI reported, mode "off", mode "configured" and no
  binding for this EID): allowed;
- first IMEI of a device (mode "first-reported"): bound (`BindImei`) and allowed;
- another IMEI: the device is quarantined (`SetQuarantine`), one alarm (`imei-mismatch:<EID>`),
  one audit record and one `device.quarantined` webhook event; not allowed;
- already quarantined: not allowed, and nothing new is raised (no flood while the device
  keeps waking).

"Not allowed" means: the runtime does not feed the uplink to the engine (no eUICC operation
runs) and answers it with ErrorMsg(FORBIDDEN, "quarantined ..."). Only an operator action
ends it: `release` (optionally re-binding to a new IMEI, or to the next one reported) or
`quarantine` (an operator quarantines a device by hand). Pure: decisions only.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.policies import ImeiPolicy
from gateway.policy.decisions import (
    Alarm,
    AuditPolicy,
    BindImei,
    ClearAlarm,
    EmitEvent,
    PolicyDecision,
    RaiseAlarm,
    SetQuarantine,
)


@dataclass(frozen=True, slots=True)
class ImeiVerdict:
    allowed: bool
    decisions: tuple[PolicyDecision, ...] = ()


def alarm_key(eid: bytes) -> str:
    return f"imei-mismatch:{eid.hex()}"


def check_imei(policy: ImeiPolicy, eid: bytes, reported: str | None, *, bound: str | None, quarantined: bool,
               now: float) -> ImeiVerdict:
    """The verdict on one uplink: `bound` and `quarantined` are the registry's values."""
    if quarantined:
        return ImeiVerdict(False)
    if policy.mode == "off" or reported is None:
        return ImeiVerdict(True)
    configured = policy.bindings.get(eid.hex())
    decisions: list[PolicyDecision] = []
    if configured is not None and configured != bound:
        decisions.append(BindImei(eid, configured))
        decisions.append(AuditPolicy(eid, "bindImei", "configured", (("imei", configured),)))
        bound = configured
    if bound is None:
        if policy.mode == "configured":
            return ImeiVerdict(True, tuple(decisions))
        decisions.append(BindImei(eid, reported))
        decisions.append(AuditPolicy(eid, "bindImei", "first-reported", (("imei", reported),)))
        return ImeiVerdict(True, tuple(decisions))
    if reported == bound:
        return ImeiVerdict(True, tuple(decisions))
    reason = f"IMEI {reported} reported, bound to {bound}"
    decisions += [
        SetQuarantine(eid, True, reason),
        RaiseAlarm(Alarm(alarm_key(eid), "imei-mismatch", "major",
                         f"device {eid.hex()} quarantined: {reason}", eid,
                         (("reported_imei", reported), ("bound_imei", bound)))),
        AuditPolicy(eid, "quarantine", "imei-mismatch", (("reported_imei", reported), ("bound_imei", bound))),
        EmitEvent(f"device.quarantined:{eid.hex()}:{reported}:{now:.0f}", "device.quarantined", now, eid,
                  (("reason", "imei-mismatch"), ("reported_imei", reported), ("bound_imei", bound))),
    ]
    return ImeiVerdict(False, tuple(decisions))


def release(eid: bytes, *, rebind: str | None, keep_binding: bool, now: float,
            operator: str = "operator") -> list[PolicyDecision]:
    """Operator: let the device work again. `rebind` binds it to that IMEI; with neither
    `rebind` nor `keep_binding`, the next IMEI it reports becomes its binding."""
    out: list[PolicyDecision] = [SetQuarantine(eid, False, None)]
    if rebind is not None:
        out.append(BindImei(eid, rebind))
    elif not keep_binding:
        out.append(BindImei(eid, None))
    detail = (("rebind", rebind), ("keep_binding", keep_binding), ("origin", operator))
    out += [ClearAlarm(alarm_key(eid), f"device {eid.hex()} released by {operator}"),
            AuditPolicy(eid, "release", "ok", detail),
            EmitEvent(f"device.released:{eid.hex()}:{now:.0f}", "device.released", now, eid, detail)]
    return out


def quarantine(eid: bytes, *, reason: str, now: float, operator: str = "operator") -> list[PolicyDecision]:
    """Operator: stop every eUICC operation on the device until it is released."""
    detail = (("reason", reason), ("origin", operator))
    return [SetQuarantine(eid, True, f"{operator}: {reason}"),
            AuditPolicy(eid, "quarantine", "operator", detail),
            EmitEvent(f"device.quarantined:{eid.hex()}:operator:{now:.0f}", "device.quarantined", now, eid, detail)]
