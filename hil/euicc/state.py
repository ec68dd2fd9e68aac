"""Persistent (non-volatile) state of the software eUICC, kept in one JSON file.

Theory of operation. Everything a real eUICC keeps across a power cycle lives in `EuiccState`:
installed Profiles (ISD-Ps with their metadata and state), the eIM configuration list with
the last counter value accepted from each eIM, pending Notifications and EuiccPackageResults
(one sequence-number space, kept until RemoveNotificationFromList), the default SM-DP+
address, the immediate-enable configuration, the fallback/rollback/emergency bookkeeping.
The RSP session (challenge, session keys, the BPP being loaded) is volatile and lives in
`rsp.py`, never here.

`save()` writes the whole state to a temporary file in the same directory, fsyncs it,
renames it over the old file and fsyncs the directory: a crash at any instant leaves either
the old or the new state, never a mix. Bytes are stored as hex strings.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

STATE_VERSION = 1


@dataclass
class Profile:
    iccid: bytes                             # b"" between ConfigureISDP and StoreMetadata
    isdp_aid: bytes
    state: str = "disabled"                  # "disabled" | "enabled"
    install_state: str = "installing"        # "installing" (between ConfigureISDP and the end) | "installed"
    profile_class: str = "operational"       # "test" | "provisioning" | "operational"
    nickname: str | None = None
    service_provider_name: str | None = None
    profile_name: str | None = None
    icon_type: str | None = None
    icon: bytes | None = None
    notification_config: list[tuple[list[str], str]] = field(default_factory=list)
    profile_policy_rules: list[str] = field(default_factory=list)
    dp_proprietary_data: bytes | None = None
    fallback: bool = False
    fallback_allowed: bool = False
    emergency: bool = False
    smdp_oid: str | None = None
    profile_elements: int = 0
    connectivity_parameters: bytes | None = None
    # what a torn installation needs to report itself at the next power-up
    install_transaction_id: bytes | None = None
    install_smdp_address: str | None = None
    install_command: int = 1


@dataclass
class EimConfig:
    eim_id: str
    counter: int = 0                         # last counterValue accepted (AddInitialEim's initial value)
    eim_fqdn: str | None = None
    eim_id_type: int | None = None
    association_token: int | None = None
    eim_public_key: bytes | None = None      # DER SubjectPublicKeyInfo
    eim_certificate: bytes | None = None     # DER X.509, when given instead of a bare key
    trusted_tls_key: bytes | None = None
    trusted_tls_certificate: bytes | None = None
    eim_supported_protocol: tuple[bytes, int] | None = None
    euicc_ci_pkid: bytes | None = None
    indirect_profile_download: bool = False


@dataclass
class Notification:
    seq_number: int
    event: str            # "install" | "enable" | "disable" | "delete" | "euiccPackageResult"
    address: str
    iccid: bytes | None
    der: bytes            # the exact PendingNotification / EuiccPackageResult bytes signed by the eUICC


@dataclass
class EuiccState:
    profiles: list[Profile] = field(default_factory=list)
    eims: list[EimConfig] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    next_seq_number: int = 1
    next_isdp: int = 1
    default_dp_address: str | None = None
    root_ds_address: str = "testrootsmds.example.com"
    immediate_enable: bool = False
    immediate_enable_address: str | None = None
    rollback_iccid: bytes | None = None       # Profile to return to after an enable with rollbackFlag
    fallback_from_iccid: bytes | None = None  # Profile that was enabled before ExecuteFallbackMechanism
    emergency_from_iccid: bytes | None = None
    emergency_active: bool = False
    rollback_context: dict[str, Any] | None = None  # eimId/counterValue/eimTransactionId of the enable
    next_association_token: int = 1

    def profile(self, iccid: bytes) -> Profile | None:
        return next((p for p in self.profiles if p.iccid == iccid), None)

    def profile_by_aid(self, aid: bytes) -> Profile | None:
        return next((p for p in self.profiles if p.isdp_aid == aid), None)

    def enabled_profile(self) -> Profile | None:
        return next((p for p in self.profiles if p.state == "enabled"), None)

    def eim(self, eim_id: str) -> EimConfig | None:
        return next((e for e in self.eims if e.eim_id == eim_id), None)

    def take_seq_number(self) -> int:
        number = self.next_seq_number
        self.next_seq_number += 1
        return number


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"hex"}:
            return bytes.fromhex(value["hex"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _build(cls: Any, raw: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})


def dump(state: EuiccState) -> bytes:
    return json.dumps({"version": STATE_VERSION, "state": _to_json(asdict(state))},
                      indent=1, sort_keys=True).encode()


def load_bytes(data: bytes) -> EuiccState:
    doc = json.loads(data)
    if doc.get("version") != STATE_VERSION:
        raise ValueError(f"unsupported eUICC state version {doc.get('version')!r}")
    raw = _from_json(doc["state"])
    state: EuiccState = _build(EuiccState, raw)
    state.profiles = [_build(Profile, p) for p in raw.get("profiles", [])]
    for p in state.profiles:
        p.notification_config = [(list(ev), addr) for ev, addr in p.notification_config]
    state.eims = [_build(EimConfig, e) for e in raw.get("eims", [])]
    for e in state.eims:
        if e.eim_supported_protocol is not None:
            e.eim_supported_protocol = (e.eim_supported_protocol[0], e.eim_supported_protocol[1])
    state.notifications = [_build(Notification, n) for n in raw.get("notifications", [])]
    return state


def load(path: Path) -> EuiccState:
    """The state in `path`, or a fresh eUICC's state when the file does not exist.

    A file that is not a state this code wrote is a ValueError naming the file: a card whose
    NVM is garbage does not boot, and guessing would hide the problem.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return EuiccState()
    try:
        return load_bytes(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a software eUICC state file ({exc})") from exc


def save(state: EuiccState, path: Path) -> None:
    data = dump(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
