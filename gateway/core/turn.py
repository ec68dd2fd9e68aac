"""A *turn*: the processing of one event for one device session.

Theory of operation. `DeviceSession.handle` makes one `Turn` per event: it carries the
event's time, the engine's configuration and jitter source, and the list the resulting
actions are appended to. The work is split by concern into three sides, each a small module
(device_side: uplinks, results, the next downlink; package_side: eIM packages and
procedures; backhaul_side: requests, answers, failures, retries); this base holds what they
share and names the operations they offer one another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.core import actions as A
from gateway.core import es10
from gateway.core.config import EngineConfig
from gateway.core.procedures.base import Env, Procedure, Request
from gateway.core.procedures.discovery import Discovery
from gateway.core.procedures.download import Download
from gateway.core.procedures.eim_data import EimData
from gateway.core.procedures.eim_package import EimPackage
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.core.session import DeviceSession

PROCEDURES: dict[str, type[Procedure]] = {p.KIND: p for p in (Download, EimPackage, EimData, Discovery)}

# owners of batch parts and backhaul requests
PROC = "proc"
NOTIF = "notif"
POLL = "poll"
DELIVERY = "delivery"
# timer names
RETRY_PREFIX = "retry:"
POLL_TIMER = "poll"
UPLINK_TIMER = "uplink"     # how long a device's pending uplink may wait for the backhaul


def removed_ok(data: bytes) -> bool:
    """Did RemoveNotificationFromList leave the notification gone (ok, or nothing to delete)?"""
    try:
        return es10.remove_status(data) in (0, 1)
    except GatewayError:
        return False


def post_action(s: DeviceSession, rid: str, rec: dict[str, Any]) -> A.Action:
    """The PostEs9 / PostEs11 / PostEsipa action for a recorded request."""
    if rec["target"] == "es9":
        return A.PostEs9(s.eid, rid, rec["server"], rec["function"], rec["body"])
    if rec["target"] == "es11":
        return A.PostEs11(s.eid, rid, rec["server"], rec["function"], rec["body"])
    eim = next((e for e in (s.eims or []) if e.get("eimId") == rec["server"]), {})
    trust = eim.get("tlsTrust")
    return A.PostEsipa(s.eid, rid, rec["server"], str(eim.get("eimFqdn", "")), rec["function"], rec["body"],
                       (str(trust[0]), bytes(trust[1])) if trust else None)


class Turn:
    def __init__(self, s: DeviceSession, config: EngineConfig, rand: Callable[[], float], now: float,
                 out: list[A.Action], hold: bool = False) -> None:
        self.s, self.config, self.rand, self.now, self.out = s, config, rand, now, out
        # what waits for the backhaul is at its bound: no GetEimPackage poll, no new notifications
        # read from the eUICC, no queued package started (each would add a result or notification
        # to the backlog); what runs finishes, deliveries and removals go on
        self.hold = hold
        self.last_request: dict[str, Any] | None = None

    def env(self) -> Env:
        return Env(self.s.eid, self.now, self.config, tuple(self.s.eims or ()), self.s.imei)

    def audit(self, operation: str, result: str, detail: str = "", iccid: bytes | None = None,
              origin: str = "engine", *, event: str | None = None, seq: int | None = None) -> None:
        self.out.append(A.Audit(self.s.eid, iccid, operation, origin, result, detail, event, seq))

    # -- what each side offers the others (defined in device_side, package_side, backhaul_side)

    def feed(self, kind: str, payload: object) -> None:
        raise NotImplementedError

    def start_internal(self, proc: Procedure) -> None:
        raise NotImplementedError

    def start_next(self) -> None:
        raise NotImplementedError

    def on_package(self, eim_id: str, raw: bytes, via: str, key: str) -> None:
        raise NotImplementedError

    def acknowledged(self, seqs: list[int], eim_id: str) -> None:
        raise NotImplementedError

    def discovered(self, eims: list[dict[str, Any]], *, may_add: bool = False) -> None:
        raise NotImplementedError

    def send(self, owner: str, request: Request, max_attempts: int | None, attempt: int = 0) -> None:
        raise NotImplementedError

    def send_delivery(self, d: dict[str, Any]) -> None:
        raise NotImplementedError

    def poll(self, eim_id: str, state_changed: bool, cause: str | None = None) -> None:
        raise NotImplementedError

    def drop_requests(self, owner: str, reason: str) -> None:
        raise NotImplementedError

    def let_go(self, rid: str, reason: str) -> None:
        raise NotImplementedError

    def retry(self, rec: dict[str, Any], retryable: bool, error_class: str, detail: str,
              retry_after_s: float | None) -> bool:
        raise NotImplementedError

    def settle(self, force: bool = False) -> None:
        raise NotImplementedError
