"""Roaming exposure: days each device spent on visited networks, per visited country.

Theory of operation. Many countries limit how long a foreign SIM may stay on their networks
("permanent roaming"); an operator wants an alarm early enough to order a local profile from
the eIM. Each status a device reports carries its serving PLMN. The device is *visiting*
when that PLMN is neither its home network nor one of `allowed_plmns`. The home network is,
by preference, the enabled profile's owner (ProfileInfo.profileOwner.mccMnc, given with
`set_home` by whoever reads the profile list: `plmn.enabled_profile_home`), else
`home_plmns` from the configuration; with neither, nothing is counted (it cannot be told).

A UTC day (floor(now / 86400)) on which the device reported a visited network of country C
(its MCC) is one day in C; two reports from C at most `fill_gap_days` apart count the days
between as well (a sleeping device did not leave). The count of country C is the number of
such days in the sliding window of the last `window_days` days (today included). When it
reaches the country's `max_days` (`[policies.roaming.countries."<MCC>"]`, else the default
`max_days`, 0 = no alarm), ONE alarm `roaming-exposure:<EID>:<MCC>` is raised (plus an audit
record and a `roaming.threshold` webhook event); it clears when the count drops below again.

Pure: counting from the injected `now` (epoch seconds). State per device is JSON
(`SavePolicyState` kind "roaming"):
    {"v": 1, "home": "20801" | null, "days": {"<MCC>": [<UTC day number>, ...]},
     "last": [<day>, "<MCC>"] | null, "alarmed": ["<MCC>", ...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway.config.policies import RoamingPolicy
from gateway.errors import DecodeError
from gateway.policy import plmn
from gateway.policy.decisions import Alarm, AuditPolicy, ClearAlarm, EmitEvent, PolicyDecision, RaiseAlarm, SavePolicyState

DAY_S = 86_400


def day_of(now: float) -> int:
    return int(now // DAY_S)


@dataclass(slots=True)
class DeviceRoaming:
    home: str | None = None
    days: dict[str, list[int]] = field(default_factory=dict)
    last: tuple[int, str] | None = None
    alarmed: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps({"v": 1, "home": self.home, "days": self.days,
                           "last": list(self.last) if self.last else None, "alarmed": self.alarmed},
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> DeviceRoaming:
        try:
            d = json.loads(blob)
            if not isinstance(d, dict) or d.get("v") != 1:
                raise ValueError("not a version 1 object")
            last = d["last"]
            if d["home"] is not None and not (isinstance(d["home"], str) and plmn.valid(d["home"])):
                raise ValueError("home is not a PLMN")
            return cls(d["home"], {str(k): sorted(int(x) for x in v) for k, v in d["days"].items()},
                       (int(last[0]), str(last[1])) if last else None, [str(a) for a in d["alarmed"]])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError, OverflowError) as exc:
            raise DecodeError(f"malformed: {exc}", type_name="roaming state") from None


def alarm_key(eid: bytes, country: str) -> str:
    return f"roaming-exposure:{eid.hex()}:{country}"


class Roaming:
    def __init__(self, policy: RoamingPolicy) -> None:
        self.policy = policy
        self.devices: dict[bytes, DeviceRoaming] = {}

    def restore(self, eid: bytes, blob: bytes) -> None:
        self.devices[eid] = DeviceRoaming.from_json(blob)

    def threshold(self, country: str) -> tuple[int, int]:
        """(max_days, window_days) for a visited country; max_days 0 = no alarm."""
        entry = self.policy.countries.get(country)
        if entry is not None:
            return entry.max_days, entry.window_days
        return self.policy.max_days, self.policy.window_days

    def _keep_days(self) -> int:
        return max([self.policy.window_days] + [c.window_days for c in self.policy.countries.values()])

    def set_home(self, eid: bytes, home: str | None, now: float) -> list[PolicyDecision]:
        """The enabled profile's home PLMN (from its profileOwner), None when unknown."""
        device = self.devices.setdefault(eid, DeviceRoaming())
        if device.home == home:
            return []
        device.home = home
        return [AuditPolicy(eid, "roamingHome", "set", (("home_plmn", home),)),
                SavePolicyState(eid, "roaming", device.to_json())]

    def visiting(self, device: DeviceRoaming, serving: str) -> bool | None:
        """True/False, or None when the home network is unknown."""
        if serving in self.policy.allowed_plmns:
            return False
        homes = [device.home] if device.home is not None else list(self.policy.home_plmns)
        if not homes:
            return None
        return serving not in homes

    def observe(self, eid: bytes, serving: str | None, now: float) -> list[PolicyDecision]:
        if not self.policy.enabled or not plmn.valid(serving):
            return []
        assert serving is not None
        device = self.devices.setdefault(eid, DeviceRoaming())
        before = device.to_json()
        today = day_of(now)
        if self.visiting(device, serving):
            country = plmn.mcc(serving)
            days = set(device.days.get(country, []))
            if device.last is not None and device.last[1] == country and \
                    0 < today - device.last[0] <= self.policy.fill_gap_days:
                days.update(range(device.last[0] + 1, today))
            days.add(today)
            device.days[country] = sorted(days)
            device.last = (today, country)
        else:
            device.last = None
        out: list[PolicyDecision] = []
        keep = self._keep_days()
        for country in list(device.days):
            device.days[country] = [d for d in device.days[country] if d > today - keep]
            if not device.days[country]:
                del device.days[country]
        for country in sorted(set(device.days) | set(device.alarmed)):
            self._judge(eid, device, country, today, now, serving, out)
        after = device.to_json()
        if after != before:
            out.append(SavePolicyState(eid, "roaming", after))
        return out

    def count(self, device: DeviceRoaming, country: str, today: int) -> int:
        _, window = self.threshold(country)
        return sum(1 for d in device.days.get(country, []) if today - window < d <= today)

    def exposure(self, eid: bytes, now: float) -> dict[str, dict[str, Any]]:
        """Per visited country: days in its window, threshold, alarm (metrics and the API)."""
        device = self.devices.get(eid)
        if device is None:
            return {}
        today = day_of(now)
        out: dict[str, dict[str, Any]] = {}
        for country in sorted(device.days):
            max_days, window = self.threshold(country)
            out[country] = {"days": self.count(device, country, today), "window_days": window,
                            "max_days": max_days, "alarm": country in device.alarmed}
        return out

    def _judge(self, eid: bytes, device: DeviceRoaming, country: str, today: int, now: float, serving: str,
               out: list[PolicyDecision]) -> None:
        max_days, window = self.threshold(country)
        days = self.count(device, country, today)
        over = max_days > 0 and days >= max_days
        if over and country not in device.alarmed:
            device.alarmed.append(country)
            text = (f"device {eid.hex()} has spent {days} of the last {window} days on visited networks "
                    f"of country {country} (threshold {max_days})")
            detail = (("country_mcc", country), ("days", days), ("window_days", window), ("max_days", max_days),
                      ("serving_plmn", serving), ("home_plmn", device.home))
            out.append(RaiseAlarm(Alarm(alarm_key(eid, country), "roaming-exposure", "major", text, eid, detail)))
            out.append(AuditPolicy(eid, "roamingExposure", "threshold", detail))
            out.append(EmitEvent(f"roaming.threshold:{eid.hex()}:{country}:{today}", "roaming.threshold", now, eid,
                                 detail))
        elif not over and country in device.alarmed:
            device.alarmed.remove(country)
            out.append(ClearAlarm(alarm_key(eid, country),
                                  f"device {eid.hex()}: {days} days in {country} now, under {max_days}"))
            out.append(AuditPolicy(eid, "roamingExposure", "cleared", (("country_mcc", country), ("days", days))))
