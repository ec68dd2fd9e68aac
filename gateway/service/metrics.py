"""Prometheus metrics of the daemon, rendered in the text exposition format (version 0.0.4).

Theory of operation. The runtime counts what happens as it happens (`Counter.inc`): device
round trips, APDUs and bytes each way, backhaul requests by outcome, errors by kind, audit
records (downloads among them). Values that are a picture of the moment (queue depth,
sessions by state, breaker states) are `Gauge`s set by the API just before it renders, from
the store and the runtime. `Registry.render()` writes every family with its HELP and TYPE
lines; label values are escaped as the format requires. The format is small and stable, so it
is written here rather than pulling in a client library.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "ipae_gateway_"

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


@dataclass(slots=True)
class _Family:
    name: str
    help: str
    labels: tuple[str, ...]
    kind: str
    values: dict[LabelValues, float] = field(default_factory=dict)

    def _key(self, labels: Mapping[str, str]) -> LabelValues:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labels)

    def get(self, **labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        if not self.labels and not self.values:
            yield f"{self.name} 0"
        for key in sorted(self.values):
            if self.labels:
                text = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(self.labels, key))
                yield f"{self.name}{{{text}}} {_number(self.values[key])}"
            else:
                yield f"{self.name} {_number(self.values[key])}"


class Counter(_Family):
    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount


class Gauge(_Family):
    def set(self, value: float, **labels: str) -> None:
        self.values[self._key(labels)] = value

    def clear(self) -> None:
        self.values.clear()


F = TypeVar("F", bound=_Family)


class Registry:
    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        return self._add(Counter(PREFIX + name + "_total", help, tuple(labels), "counter"))

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Gauge:
        return self._add(Gauge(PREFIX + name, help, tuple(labels), "gauge"))

    def _add(self, family: F) -> F:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} registered twice")
        self._families[family.name] = family
        return family

    def render(self) -> str:
        return "".join(line + "\n" for f in self._families.values() for line in f.lines())


class GatewayMetrics:
    """Every metric the gateway exports, by name."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.round_trips = r.counter("round_trips", "Device-link exchanges answered (one uplink, one downlink)",
                                     ["downlink"])
        self.apdus = r.counter("apdus", "APDUs sent to eUICCs in batches")
        self.uplink_bytes = r.counter("uplink_bytes", "Encoded uplink bytes received from devices")
        self.downlink_bytes = r.counter("downlink_bytes", "Encoded downlink bytes sent to devices")
        self.backhaul_requests = r.counter("backhaul_requests", "Northbound requests by target, function and outcome",
                                           ["target", "function", "outcome"])
        self.errors = r.counter("errors", "Errors by kind (backhaul error class, exchange timeout, engine failure)",
                                ["kind"])
        self.stale_answers = r.counter("stale_answers", "Backhaul answers to requests the engine had let go of"
                                       " (harmless), by reason", ["reason"])
        self.audit = r.counter("audit_records", "Audit records written, by operation and result",
                               ["operation", "result"])
        self.downloads = r.counter("downloads", "Profile downloads finished, by result", ["result"])
        self.operator_actions = r.counter("operator_actions", "Operator actions received on the API", ["kind"])
        self.queue_depth = r.gauge("queue_depth", "Entries waiting: inbox (for devices), outbox (for servers)",
                                   ["queue"])
        self.queue_bytes = r.gauge("outbox_bytes", "Payload bytes waiting in the outbox")
        self.outbox_level = r.gauge("outbox_level", "Fill level of the outbox (everything waiting for the backhaul):"
                                    " 0 ok, 1 above its alarm ratio, 2 at its bound")
        self.holding_new_work = r.gauge("holding_new_work", "1 while the outbox is at its bound: no eIM polls or"
                                        " pushes, no notifications read, no queued package started")
        self.sessions = r.gauge("sessions", "Device sessions by state", ["state"])
        self.devices = r.gauge("devices", "Devices known to the gateway")
        self.pending_exchanges = r.gauge("pending_exchanges", "Device uplinks waiting for their downlink")
        self.backhaul_state = r.gauge("backhaul_circuit_open",
                                      "1 when the circuit breaker toward a server is open or half-open",
                                      ["server", "state"])
        self.policy = r.gauge("policy", "Policy state: fallback devices by state, switches in flight, alarms by kind,"
                                        " roaming-alarmed devices", ["family", "key"])
        self.db_bytes = r.gauge("store_bytes", "Size of the SQLite database and its WAL")
        self.up = r.gauge("uptime_seconds", "Seconds since the daemon started")

    def render(self) -> str:
        return self.registry.render()
