"""Device groups: which devices a `[policies.groups.<name>]` selector takes in.

Theory of operation. A device is described by `DeviceFacts` (EID, tags, site, model), built
by the runtime from what it knows of the device: the store registry's tags and, until the
fleet files carry `site`/`model` keys of their own, the tag convention "site:<name>" and
"model:<name>" (`DeviceFacts.from_tags`). A group selector matches a device when any of its
lists matches (any tag, the site, the model, the EID). A device belongs to the FIRST group
in configuration order that matches it (so its fallback policy is unambiguous); a group
operation acts on every device the group's selector matches. Pure: no store, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.config.policies import GroupSection
from gateway.errors import ConfigError

SITE_PREFIX = "site:"
MODEL_PREFIX = "model:"


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    eid: bytes
    tags: frozenset[str] = frozenset()
    site: str | None = None
    model: str | None = None

    @classmethod
    def from_tags(cls, eid: bytes, tags: Iterable[str], *, site: str | None = None,
                  model: str | None = None) -> DeviceFacts:
        tag_set = frozenset(tags)
        for tag in sorted(tag_set):
            if site is None and tag.startswith(SITE_PREFIX):
                site = tag[len(SITE_PREFIX):]
            if model is None and tag.startswith(MODEL_PREFIX):
                model = tag[len(MODEL_PREFIX):]
        return cls(eid, tag_set, site, model)


def matches(selector: GroupSection, device: DeviceFacts) -> bool:
    return bool(
        (selector.tags and device.tags.intersection(selector.tags))
        or (device.site is not None and device.site in selector.sites)
        or (device.model is not None and device.model in selector.models)
        or device.eid.hex() in selector.eids)


def group_of(groups: Mapping[str, GroupSection], device: DeviceFacts) -> str | None:
    """The first group (configuration order) whose selector matches the device."""
    return next((name for name, sel in groups.items() if matches(sel, device)), None)


def members(groups: Mapping[str, GroupSection], name: str, devices: Iterable[DeviceFacts]) -> list[bytes]:
    """EIDs of every device the group's selector matches, in EID order."""
    selector = groups.get(name)
    if selector is None:
        known = ", ".join(groups) or "none configured"
        raise ConfigError(f"no device group {name!r} (groups: {known})", key=f"policies.groups.{name}")
    return sorted(d.eid for d in devices if matches(selector, d))
