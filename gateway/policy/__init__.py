"""Edge policies: automatic fallback and return, IMEI binding, roaming exposure, webhooks, groups.

Theory of operation. The policies decide from what devices report and from an injected clock,
and return decisions as data (gateway.policy.decisions); the engine and the runtime carry
them out (DESIGN principle 1). Pure modules: decisions, plmn, groups, fallback, imei,
roaming, events, alarms, policies. I/O modules: webhooks (aiohttp + the store's outbox),
bulk (group operations through the runtime).

The shortest wiring needs no engine change: `gate.PolicyGate` is an `UplinkHandler` the
runtime puts in front of its own (links -> gate -> runtime). It runs steps 1 and the RunEs10
part of 2 below itself (quarantine refusal; the fallback/return call as a batch of its own,
then the wake-up continues with the runtime) and hands every decision to a `GateBackend`
the runtime implements (`registry(eid)`, `apply_decisions(eid, decisions, now)`); for a
`ReportStateChange` the runtime posts `gate.report_request(d)` to the device's eIM at `d.at`
and feeds the answer to the engine as EimPackageReceived(via="poll").

How the runtime and the engine take the decisions (the wiring contract):

1. On every uplink, BEFORE `engine.handle`, the runtime reads the device's registry row
   (imei, quarantined, tags) and calls
       verdict = policies.on_status(eid, status, now, group=group_of(config.groups, facts),
                                    wake=isinstance(uplink, Hello), bound_imei=row.imei,
                                    quarantined=row.quarantined)
   (`now` is wall-clock epoch seconds: roaming counts UTC days). If `verdict.allowed` is
   False the engine does not see the uplink: the runtime answers
   ErrorMsg(ErrorCode.FORBIDDEN, "device quarantined") and applies the decisions.
2. Decisions are applied in list order. The store ones go into the SAME store transaction
   as the engine actions of that uplink:
       SetQuarantine   -> Devices.set_quarantine(eid, quarantined, reason=..., now=now)
       BindImei        -> Devices.bind_imei(eid, imei, now=now)
       AuditPolicy     -> AuditLog.append(time=now, eid=, iccid=, operation=, result=, detail=dict(detail))
       EmitEvent       -> gateway.policy.webhooks.enqueue_event(store, d, config.webhooks, ...)
                          (then WebhookDispatcher.kick() after the commit)
       SavePolicyState -> a policy_state(eid, kind) row (blob is JSON; kinds "fallback",
                          "wave" with eid b"", "roaming"); at start-up every row goes back
                          through `Policies.restore(eid, kind, blob)`
   The others:
       RaiseAlarm / ClearAlarm -> already in `policies.alarms` (metrics: alarms by kind; API:
                          `[a.to_json() for a in policies.alarms.active.values()]`)
       RunEs10         -> engine event asking for one ES10b call on that device: the engine
                          runs `request` (DER, sent with STORE DATA on the ISD-R channel) ahead
                          of queued eIM packages, in the batch answering this very uplink
                          (the policy only grants a call while the device is awake), sets the
                          batch's refresh to `refresh`, and reports the outcome as an action
                          the runtime feeds to `policies.on_es10_result(eid, token, response,
                          now)`: `response` = the eUICC's response bytes (SW 9000), None when
                          the call did not run (batch lost, other SW, stopped before it).
       ReportStateChange -> at time `at` (a timer), the engine polls every eIM of the device
                          with GetEimPackage carrying notifyStateChange, stateChangeCause =
                          `cause` and rPLMN = `rplmn` or, when None, the serving PLMN the device
                          reported since the switch (absent if none yet: never the PLMN it left).
                          Once per token: the report is the state change.
   A report is sent once: after the eIM answered its GetEimPackage, the runtime calls
   `policies.report_sent(eid, token, now)`, applies the result and feeds the engine
   StateReportPending(pending=False, answered=True) (the engine's own PLMN-change report stays
   held until the device next names its network, which counts as reported); at start-up, after every
   `restore`, it applies `policies.resume(now)` (the reports decided but not yet sent).
3. `policies.tick(now)` every minute or so (frees fallback slots of vanished devices), and
   `policies.alarms.queue_level(outbox.usage().level, ...)` after outbox writes; apply the
   results as in 2.
4. When the engine learns the enabled profile's owner (ProfileInfoListResponse), the runtime
   calls `policies.roaming.set_home(eid, plmn.enabled_profile_home(data)[1], now)`.
5. Profile state events for webhooks: for each engine Audit action, `events.
   profile_event_from_audit(eid, a.operation, a.result, a.detail, iccid digits, now)` gives
   the profile.installed/enabled/disabled/deleted event of a delivered eUICC notification
   (or `events.profile_event(...)` where the notification itself is at hand).
6. Group operations: `bulk.GroupOperations(backend, astore, lambda: config.policies.groups)`;
   the runtime implements `GroupBackend` (`operator` = Runtime.operator, `apply_decisions`
   = step 2 outside an uplink).
"""

from gateway.policy.alarms import AlarmBook
from gateway.policy.decisions import (
    EXECUTE_FALLBACK,
    RETURN_FROM_FALLBACK,
    STORE_DECISIONS,
    Alarm,
    AuditPolicy,
    BindImei,
    ClearAlarm,
    EmitEvent,
    PolicyDecision,
    RaiseAlarm,
    ReportStateChange,
    RunEs10,
    SavePolicyState,
    SetQuarantine,
)
from gateway.policy.groups import DeviceFacts, group_of, members
from gateway.policy.policies import Policies, StatusVerdict

__all__ = [
    "EXECUTE_FALLBACK", "RETURN_FROM_FALLBACK", "STORE_DECISIONS", "Alarm", "AlarmBook", "AuditPolicy", "BindImei",
    "ClearAlarm", "DeviceFacts", "EmitEvent", "Policies", "PolicyDecision", "RaiseAlarm", "ReportStateChange",
    "RunEs10", "SavePolicyState", "SetQuarantine", "StatusVerdict", "group_of", "members",
]
