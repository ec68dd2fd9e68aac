"""The `[policies]` tables of gateway.toml: fallback, IMEI binding, roaming, webhooks, groups.

One frozen dataclass per table, built with `setting`/`table` like the rest of the model, so
each key's default, limits and documentation are stated once, here. Device groups are a
table of named selectors (`[policies.groups.<name>]`); a group may carry its own
`[policies.groups.<name>.fallback]` table, which replaces `[policies.fallback]` for the
devices of that group (keys it leaves out take the built-in defaults, not the global table's).
Roaming thresholds per visited country are `[policies.roaming.countries."<MCC>"]`.

`check_policies` holds the cross-checks that need more than one key (a webhook URL without
the HMAC secret in credentials.toml, plain http:// without the lab flag, a group's selector
naming a device twice); they name the key that has to change.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.config.schema import dotted, setting, table
from gateway.errors import ConfigError

_PLMN = re.compile(r"\d{5,6}")
_MCC = re.compile(r"\d{3}")
_IMEI = re.compile(r"\d{14,16}")


def _url(value: Any) -> str | None:
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s]*)?", str(value)):
        return "an http:// or https:// URL"
    return None


def _plmns(value: Any) -> str | None:
    return None if all(_PLMN.fullmatch(p) for p in value) else "PLMN codes of 5 or 6 digits"


def _eids(value: Any) -> str | None:
    return None if all(re.fullmatch(r"[0-9]{32}", e) for e in value) else "EIDs of 32 digits"


def _names(value: Any) -> str | None:
    ok = all(re.fullmatch(r"[A-Za-z0-9._:/@+-]{1,64}", v) for v in value)
    return None if ok else "names of letters, digits and ._:/@+- (1 to 64 characters)"


def mapping(doc: str) -> Any:
    """A `Mapping[str, T]` field (a TOML table of named entries), empty by default; its names
    are checked by `check_policies`."""
    return dataclasses.field(default_factory=lambda: types.MappingProxyType({}), metadata={"doc": doc})


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    enabled: bool = setting(False, "Run ExecuteFallbackMechanism when a device's network fails")
    attach_failures: int = setting(
        3, "Consecutive attach failures reported by a device that trigger the fallback (0: not used)", min=0, max=1000)
    failed_wakeups: int = setting(
        0, "Consecutive wake-ups reporting a failure (attach or weak signal) that trigger it (0: not used)",
        min=0, max=1000)
    failing_for_s: float = setting(
        0.0, "Seconds a device keeps reporting failures before it falls back (0: not used)", min=0, max=30 * 86400)
    min_signal_dbm: int | None = setting(
        None, "Signal (dBm) below which a wake-up counts as failed; unset: signal is not used", min=-150, max=0)
    refresh: Literal["uicc-reset", "modem-reset"] = setting(
        "uicc-reset", "What the device does after the switch: uicc-reset or modem-reset")
    return_after_s: float = setting(
        6 * 3600.0, "Seconds on the fallback profile before ReturnFromFallback is tried", min=60, max=90 * 86400)
    return_after_max_s: float = setting(
        7 * 86400.0, "Longest wait before returning; the wait doubles each time a device falls back again",
        min=60, max=365 * 86400)
    call_timeout_s: float = setting(
        86400.0, "Seconds a decided ES10b call may wait for the device before its wave slot is freed",
        min=60, max=30 * 86400)
    cooldown_s: float = setting(
        3600.0, "After a fallback the eUICC refused, seconds before the conditions are checked again",
        min=0, max=30 * 86400)


@dataclass(frozen=True, slots=True)
class FallbackWaveSection:
    max_concurrent: int = setting(
        20, "Fallbacks/returns decided but not yet answered by their devices, at most, gateway-wide", min=1, max=10000)
    outage_devices: int = setting(
        10, "Devices of one group triggering within outage_window_s that make one carrier-outage alarm",
        min=2, max=100000)
    outage_window_s: float = setting(900.0, "Window of the carrier-outage detection", min=10, max=7 * 86400)
    report_spread_s: float = setting(
        600.0, "State-change reports to the eIM are spread at random over this many seconds", min=0, max=86400)
    report_rate_per_s: float = setting(
        2.0, "State-change reports to the eIM per second, at most (all devices together)", min=0.001, max=1000)


@dataclass(frozen=True, slots=True)
class ImeiPolicy:
    mode: Literal["off", "first-reported", "configured"] = setting(
        "first-reported", "IMEI binding: off, first-reported (bind on first report) or configured (bindings only)")
    bindings: Mapping[str, str] = mapping(
        "IMEI each EID is bound to, as \"<EID>\" = \"<IMEI>\"")


@dataclass(frozen=True, slots=True)
class RoamingCountry:
    max_days: int = setting(90, "Days on a visited network in this country that raise the alarm", min=1, max=3660)
    window_days: int = setting(120, "Sliding window the days are counted in", min=1, max=3660)


@dataclass(frozen=True, slots=True)
class RoamingPolicy:
    enabled: bool = setting(False, "Count days on visited networks and raise roaming-exposure alarms")
    allowed_plmns: tuple[str, ...] = setting(
        (), "Networks (MCC+MNC, 5 or 6 digits) never counted as roaming: home and equivalent networks",
        check=_plmns)
    home_plmns: tuple[str, ...] = setting(
        (), "Home network of devices whose enabled profile's owner (profileOwner) is not known yet",
        check=_plmns)
    max_days: int = setting(
        0, "Default alarm threshold for a country without its own entry (0: no alarm there)", min=0, max=3660)
    window_days: int = setting(120, "Default sliding window, in days", min=1, max=3660)
    fill_gap_days: int = setting(
        2, "Two reports from one visited country this many days apart count the days between too", min=0, max=30)
    countries: Mapping[str, RoamingCountry] = mapping(
        "Thresholds per visited country, as [policies.roaming.countries.\"<MCC>\"]")


@dataclass(frozen=True, slots=True)
class WebhooksPolicy:
    urls: tuple[str, ...] = setting(
        (), "URLs that receive a signed POST for each event; secret: credentials webhooks.hmac_secret",
        check=lambda v: next((p for p in map(_url, v) if p), None))
    events: tuple[str, ...] = setting(
        (), "Event types sent (for example profile.enabled, fallback.executed); empty: every type",
        check=lambda v: None if all(re.fullmatch(r"[a-z_]+\.[a-z_]+|\*", e) for e in v) else "event types like profile.enabled")
    timeout_s: float = setting(5.0, "Timeout of one webhook POST", min=0.1, max=120)
    ca_file: Path | None = setting(
        None, "CA bundle (PEM) receivers' certificates must chain to; unset: the system trust store")
    allow_plain_lab: bool = setting(False, "Allow http:// URLs; for a lab bench only (events travel unencrypted)")
    max_concurrency: int = setting(4, "POSTs in flight per URL", min=1, max=100)


@dataclass(frozen=True, slots=True)
class GroupSection:
    tags: tuple[str, ...] = setting((), "Devices carrying any of these tags", check=_names)
    sites: tuple[str, ...] = setting((), "Devices at any of these sites", check=_names)
    models: tuple[str, ...] = setting((), "Devices of any of these models", check=_names)
    eids: tuple[str, ...] = setting((), "These devices, by EID", check=_eids)
    fallback: FallbackPolicy | None = setting(None, "Fallback policy of the group (replaces policies.fallback)")


@dataclass(frozen=True, slots=True)
class PoliciesSection:
    fallback: FallbackPolicy = table(FallbackPolicy, "Automatic fallback and return")
    fallback_wave: FallbackWaveSection = table(FallbackWaveSection, "Many devices failing at once")
    imei: ImeiPolicy = table(ImeiPolicy, "IMEI binding and quarantine")
    roaming: RoamingPolicy = table(RoamingPolicy, "Roaming exposure")
    webhooks: WebhooksPolicy = table(WebhooksPolicy, "Webhooks")
    groups: Mapping[str, GroupSection] = mapping(
        "Device groups, as [policies.groups.<name>]; a device belongs to the first group it matches")

    def fallback_for(self, group: str | None) -> FallbackPolicy:
        section = self.groups.get(group) if group is not None else None
        if section is not None and section.fallback is not None:
            return section.fallback
        return self.fallback


def check_policies(policies: PoliciesSection, *, has_webhook_secret: bool, file_of: Callable[[str], str],
                   credentials_file: str) -> None:
    """Cross-checks of the [policies] tables; each error names the key to change."""
    hooks = policies.webhooks
    if hooks.urls and not has_webhook_secret:
        raise ConfigError(f"required because policies.webhooks.urls is set (in {file_of('policies.webhooks.urls')})",
                          file=credentials_file, key="webhooks.hmac_secret")
    for i, url in enumerate(hooks.urls):
        if url.startswith("http://") and not hooks.allow_plain_lab:
            raise ConfigError("http:// sends signed events in clear; use https:// or set "
                              "policies.webhooks.allow_plain_lab = true on a lab bench only",
                              file=file_of("policies.webhooks.urls"), key=f"policies.webhooks.urls[{i}]")
    roaming = policies.roaming
    for mcc, country in roaming.countries.items():
        key = dotted("policies.roaming.countries", mcc)
        if not _MCC.fullmatch(mcc):
            raise ConfigError("a country is its mobile country code (MCC), 3 digits", file=file_of(key), key=key)
        if country.max_days > country.window_days:
            raise ConfigError(f"max_days ({country.max_days}) cannot exceed window_days ({country.window_days})",
                              file=file_of(f"{key}.max_days"), key=f"{key}.max_days")
    if roaming.max_days > roaming.window_days:
        raise ConfigError(f"max_days ({roaming.max_days}) cannot exceed window_days ({roaming.window_days})",
                          file=file_of("policies.roaming.max_days"), key="policies.roaming.max_days")
    for eid, imei in policies.imei.bindings.items():
        key = dotted("policies.imei.bindings", eid)
        if not re.fullmatch(r"[0-9]{32}", eid):
            raise ConfigError("an EID of 32 digits", file=file_of(key), key=key)
        if not _IMEI.fullmatch(imei):
            raise ConfigError("an IMEI of 14 to 16 digits", file=file_of(key), key=key)
    for name, group in policies.groups.items():
        key = dotted("policies.groups", name)
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ConfigError("a group name is 1 to 64 letters, digits, _ or -", file=file_of(key), key=key)
        if not (group.tags or group.sites or group.models or group.eids):
            raise ConfigError("a group needs at least one of tags, sites, models, eids", file=file_of(key), key=key)
        if group.fallback is not None:
            _check_fallback(group.fallback, f"{key}.fallback", file_of)
    _check_fallback(policies.fallback, "policies.fallback", file_of)


def _check_fallback(policy: FallbackPolicy, key: str, file_of: Callable[[str], str]) -> None:
    if policy.enabled and not (policy.attach_failures or policy.failed_wakeups or policy.failing_for_s):
        raise ConfigError("an enabled fallback needs a trigger: attach_failures, failed_wakeups or failing_for_s",
                          file=file_of(f"{key}.enabled"), key=f"{key}.enabled")
    if policy.return_after_max_s < policy.return_after_s:
        raise ConfigError("cannot be shorter than return_after_s", file=file_of(f"{key}.return_after_max_s"),
                          key=f"{key}.return_after_max_s")


__all__ = [
    "FallbackPolicy", "FallbackWaveSection", "GroupSection", "ImeiPolicy", "PoliciesSection", "RoamingCountry",
    "RoamingPolicy", "WebhooksPolicy", "check_policies",
]
