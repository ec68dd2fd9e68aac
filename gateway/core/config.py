"""The engine's configuration: one frozen dataclass, built by the service from the TOML config.

Invalid values are refused when the object is made (ConfigError), never later in a device's
session.

Backoffs. The engine retries three kinds of backhaul request, each with a `BackoffPolicy`:
deliveries (results and notifications for a server: retried for hours, until acknowledged),
requests of a procedure (a device's download or eIM package is waiting on them) and polls.
`northbound_backoffs` builds all three from the one set of operator keys
(``[northbound.retry]``): the same initial wait, multiplier and jitter; deliveries take the
longest wait and attempt budget as configured, while requests and polls keep short bounds of
their own (at most REQUEST_RETRY_CAP_S / POLL_RETRY_CAP_S between attempts, at most
REQUEST_RETRIES / POLL_RETRIES retries), because a device session or a wake-up waits on them
and the next wake polls again anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from gateway.core.retry import BackoffPolicy
from gateway.errors import ConfigError
from gateway.links.protocol import MAX_MESSAGE, REFRESH_MODEM_RESET, REFRESH_UICC_RESET


@dataclass(frozen=True, slots=True)
class EimEndpoint:
    """An eIM the operator configured for devices whose eUICC was not read yet."""

    eim_id: str
    fqdn: str
    indirect: bool = False

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"eimId": self.eim_id, "eimFqdn": self.fqdn}
        if self.indirect:
            out["indirectProfileDownload"] = True
        return out


@dataclass(frozen=True, slots=True)
class DeviceOverrides:
    """What the operator set for one device (its fleet entry) instead of the engine-wide value;
    None: the engine-wide value."""

    segment_size: int | None = None
    max_batch_bytes: int | None = None
    idle_retry_s: int | None = None


def _check_device_values(segment_size: int | None, max_batch_bytes: int | None, idle_retry_s: int | None,
                         where: str = "") -> None:
    if segment_size is not None and not 1 <= segment_size <= 255:
        raise ConfigError(f"STORE DATA segment size must be 1..255{where}", key="segment_size")
    if max_batch_bytes is not None and max_batch_bytes < 256:
        raise ConfigError(f"a batch budget below 256 bytes cannot carry one ES10b call{where}", key="max_batch_bytes")
    if idle_retry_s is not None and idle_retry_s < 1:
        raise ConfigError(f"idle_retry_s must be >= 1{where}", key="idle_retry_s")


REQUEST_RETRY_CAP_S = 60.0
REQUEST_RETRIES = 3
POLL_RETRY_CAP_S = 30.0
POLL_RETRIES = 1


class Backoffs(TypedDict):
    """EngineConfig's three backoff fields, as keyword arguments."""

    request_backoff: BackoffPolicy
    delivery_backoff: BackoffPolicy
    poll_backoff: BackoffPolicy


BACKOFF_KEYS = tuple(Backoffs.__annotations__)


def northbound_backoffs(initial_s: float, max_s: float, multiplier: float, jitter_ratio: float,
                        max_attempts: int | None) -> Backoffs:
    """EngineConfig's three backoffs from the operator's retry settings;
    `max_attempts` counts every attempt of a delivery, the first included (None: never give up)."""
    retries = None if max_attempts is None else max(0, max_attempts - 1)

    def policy(cap_s: float, most: int | None) -> BackoffPolicy:
        cap = min(max_s, cap_s)
        limit = retries if most is None else most if retries is None else min(retries, most)
        return BackoffPolicy(min(initial_s, cap), cap, limit, multiplier, jitter_ratio)

    try:
        return Backoffs(request_backoff=policy(REQUEST_RETRY_CAP_S, REQUEST_RETRIES),
                        delivery_backoff=policy(max_s, None),
                        poll_backoff=policy(POLL_RETRY_CAP_S, POLL_RETRIES))
    except ValueError as exc:
        raise ConfigError(str(exc), key="northbound.retry") from None


@dataclass(frozen=True, slots=True)
class EngineConfig:
    segment_size: int = 255                      # STORE DATA block size (some modems need less)
    max_batch_bytes: int | None = None           # per-device default when the agent gives none
    devices: Mapping[bytes, DeviceOverrides] = field(default_factory=dict)  # by EID: the fleet's overrides
    default_smdp: str | None = None              # for contactDefaultSmdp when the eUICC has none
    default_smds: str | None = None              # for contactSmds without an smdsAddress
    eims: tuple[EimEndpoint, ...] = ()           # eIMs to poll before the eUICC was read
    initial_eim: Mapping[str, Any] | None = None  # EimConfigurationData for AddInitialEim
    device_tac: bytes = b"\x35\x29\x06\x11"      # DeviceInfo.tac sent in ctxParams1
    refresh: str = REFRESH_UICC_RESET            # what the device does after enable/disable
    idle_retry_s: int = 3600                     # Idle when nothing is to do
    uplink_wait_s: float | None = 20.0           # longest a device waits on the backhaul for a downlink
    busy_retry_s: int = 60                       # Idle after that wait, while the backhaul still works
    poll_interval_s: float | None = None         # scheduled GetEimPackage; None = on wake-up only
    notification_check_s: float | None = 86400.0  # RetrieveNotificationsList folded into a wake
                                                 # this often (and on first contact); None = first only
    request_backoff: BackoffPolicy = field(
        default_factory=lambda: BackoffPolicy(2.0, REQUEST_RETRY_CAP_S, REQUEST_RETRIES))
    delivery_backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(5.0, 3600.0, None))
    poll_backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(2.0, POLL_RETRY_CAP_S, POLL_RETRIES))
    # Batch.next_size_hint estimates (the engine cannot know these sizes before the server's
    # answer; a CoAP agent fetches that many Block2 blocks with its uplink, and a wrong hint only
    # costs it speculative requests answered 4.02 at once, or one round trip): the BPP, announced
    # with PrepareDownload (capped by the device's batch budget), and AuthenticateServer, announced
    # with the challenge (SM-DP+ certificate, serverSigned1, signature: typically 0.8-1.5 KB)
    bpp_size_hint: int | None = 32 * 1024
    authenticate_server_size_hint: int | None = 2048
    epr_and_notifications: bool = False          # send an EPR with the notifications it caused
    rearm_in_flight: int = 2                     # deliveries a server's answer re-arms at once (per device)
    recent_packages: int = 32                    # package keys kept in the blob to refuse duplicates
    seed: int | None = None                      # jitter PRNG seed (tests); None = random

    def __post_init__(self) -> None:
        _check_device_values(self.segment_size, self.max_batch_bytes, self.idle_retry_s)
        for eid, o in self.devices.items():
            _check_device_values(o.segment_size, o.max_batch_bytes, o.idle_retry_s, f" (device {eid.hex()})")
        if self.refresh not in (REFRESH_UICC_RESET, REFRESH_MODEM_RESET):
            raise ConfigError(f"unknown refresh {self.refresh!r}", key="refresh")
        if self.busy_retry_s < 1:
            raise ConfigError("busy_retry_s must be >= 1", key="busy_retry_s")
        if self.rearm_in_flight < 0:
            raise ConfigError("rearm_in_flight must be >= 0 (0: deliveries wait for their own timers)",
                              key="rearm_in_flight")
        if self.uplink_wait_s is not None and self.uplink_wait_s <= 0:
            raise ConfigError("uplink_wait_s must be > 0", key="uplink_wait_s")
        for key in ("bpp_size_hint", "authenticate_server_size_hint"):
            hint = getattr(self, key)
            if hint is not None and not 0 <= hint <= MAX_MESSAGE:
                raise ConfigError(f"{key} must be 0..{MAX_MESSAGE}", key=key)
        if self.initial_eim is not None and "eimId" not in self.initial_eim:
            raise ConfigError("the initial eIM needs an eimId", key="initial_eim")

    def segment_size_of(self, eid: bytes) -> int:
        o = self.devices.get(eid)
        return o.segment_size if o is not None and o.segment_size is not None else self.segment_size

    def max_batch_bytes_of(self, eid: bytes) -> int | None:
        """The operator's budget for the device, used when the device reports none of its own."""
        o = self.devices.get(eid)
        return o.max_batch_bytes if o is not None and o.max_batch_bytes is not None else self.max_batch_bytes

    def idle_retry_s_of(self, eid: bytes) -> int:
        o = self.devices.get(eid)
        return o.idle_retry_s if o is not None and o.idle_retry_s is not None else self.idle_retry_s
