"""The alarm table: which alarms are raised now, for the metrics endpoint and the API.

Theory of operation. Policies raise and clear alarms by key (`RaiseAlarm`, `ClearAlarm`
decisions); `AlarmBook.apply` keeps the ones raised, with the time they were raised, and
says whether a decision changed anything (raising a raised key or clearing an unknown one
is a no-op, so a replayed decision list never doubles an alarm). The queue alarm (the
outbox above its alarm ratio) is decided here too, from the store's usage level. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.policy.decisions import Alarm, ClearAlarm, EmitEvent, PolicyDecision, RaiseAlarm

QUEUE_ALARM_KEY = "queue:outbox"


@dataclass(frozen=True, slots=True)
class ActiveAlarm:
    alarm: Alarm
    since: float

    def to_json(self) -> dict[str, object]:
        a = self.alarm
        return {"key": a.key, "kind": a.kind, "severity": a.severity, "text": a.text, "since": self.since,
                "eid": None if a.eid is None else a.eid.hex(),
                "detail": {k: (v.hex() if isinstance(v, bytes) else v) for k, v in a.detail}}


class AlarmBook:
    def __init__(self) -> None:
        self.active: dict[str, ActiveAlarm] = {}

    def apply(self, decision: PolicyDecision, now: float) -> bool:
        """Record a RaiseAlarm/ClearAlarm; True when the table changed."""
        if isinstance(decision, RaiseAlarm):
            if decision.alarm.key in self.active:
                return False
            self.active[decision.alarm.key] = ActiveAlarm(decision.alarm, now)
            return True
        if isinstance(decision, ClearAlarm):
            return self.active.pop(decision.key, None) is not None
        return False

    def by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for a in self.active.values():
            counts[a.alarm.kind] = counts.get(a.alarm.kind, 0) + 1
        return counts

    def queue_level(self, level: str, entries: int, payload_bytes: int, now: float) -> list[PolicyDecision]:
        """Decisions for the outbox usage level ("ok" | "alarm" | "full") just read."""
        active = self.active.get(QUEUE_ALARM_KEY)
        raised = active is not None
        severity = "critical" if level == "full" else "major"
        if level != "ok" and (active is None or active.alarm.severity != severity):
            # raised, or raised again with the severity of the new level (alarm <-> full)
            text = f"outbox {level}: {entries} messages / {payload_bytes} bytes waiting for the backhaul"
            if level == "full":
                text += "; new work refused until it drains under its alarm level"
            again: list[PolicyDecision] = [] if active is None else [ClearAlarm(QUEUE_ALARM_KEY, text)]
            return again + [
                    RaiseAlarm(Alarm(QUEUE_ALARM_KEY, "queue", severity, text,
                                     None, (("entries", entries), ("bytes", payload_bytes)))),
                    EmitEvent(f"alarm.raised:{QUEUE_ALARM_KEY}:{level}:{now:.0f}", "alarm.raised", now, None,
                              (("key", QUEUE_ALARM_KEY), ("kind", "queue"), ("text", text)))]
        if level == "ok" and raised:
            text = f"outbox back under its alarm level ({entries} messages)"
            return [ClearAlarm(QUEUE_ALARM_KEY, text),
                    EmitEvent(f"alarm.cleared:{QUEUE_ALARM_KEY}:{now:.0f}", "alarm.cleared", now, None,
                              (("key", QUEUE_ALARM_KEY), ("kind", "queue"), ("text", text)))]
        return []
