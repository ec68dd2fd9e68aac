"""Rig scenarios: read-only probes, and profile flows run by the gateway's IPA on a real card.

Theory of operation. Every scenario starts with the probes (hil.rig.probe) on the backend the
operator named, so the log always says what the card is. `probe` stops there. The
state-changing scenarios (`download`, `enable`, `disable`, `delete`, `lifecycle`) then:

1. refuse to touch a card that is not proven a test card (GetCerts chain under the test CI
   of --pki) unless `allow_any_card` (the CLI's --i-know-this-changes-the-card);
2. reach the test eIM and SM-DP+ (in this process, or at --eim/--smdp), register the EID and
   its certificates at the eIM, and give the eUICC the eIM's configuration if it has none
   (AddInitialEim, done by the engine as a factory would);
3. for each operation: the eIM queues it (an activation code for a fresh SM-DP+ order, or a
   PSMO), the device agent wakes until the eIM holds a result (`RigGateway`; `DaemonRig` with
   --link coap), then until
   the card has no pending notification left and the peers received the new ones; finally
   the card's own ProfileInfoList must show the expected state.

Every step is logged with the APDUs it cost and its time; `ScenarioResult.to_json()` is the
summary printed with --json.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from gateway.errors import GatewayError
from gateway.spec import codec
from hil.rig.backends import Counting, RigBackend, SerialBackend
from hil.rig.daemon_rig import DaemonRig
from hil.rig.gateway_rig import RigGateway
from hil.rig.isdr import IsdR
from hil.rig.peers import OPEN_STATES, PeerAdmin, local_peers, loopback_port
from hil.rig.probe import CardFacts, probe_card, read_notifications, read_profiles
from hil.rig.report import StepLog

log_module = logging.getLogger(__name__)

READ_ONLY = ("probe",)
STATE_CHANGING = ("download", "enable", "disable", "delete", "lifecycle")
SCENARIOS = READ_ONLY + STATE_CHANGING


class CheckFailed(Exception):
    """An outcome the scenario checks is not what it should be."""


@dataclass
class RigOptions:
    scenario: str
    pki: Any                              # hil.pki.RspPki
    eim_url: str | None = None
    smdp_url: str | None = None
    iccid: str | None = None              # enable/disable/delete: which profile
    allow_any_card: bool = False
    timeout_s: float = 60.0               # per operation
    agent: str = "device"                 # device: the reference agent; gateway: the gateway's own
                                          # serial device drives the modem (serial backends)
    link: str = "memory"                  # memory: engine+runtime, in-memory link; coap: the whole
                                          # daemon, the agent over CoAP/DTLS
    download_mode: str | None = None      # direct | indirect (through the eIM), set when the card gets
                                          # the eIM's configuration; None: as the eIM offers it
    out: TextIO | None = None


@dataclass
class ScenarioResult:
    scenario: str
    backend: dict[str, str]
    ok: bool = False
    refused: bool = False
    error: str | None = None
    card: CardFacts | None = None
    operations: list[dict[str, Any]] = field(default_factory=list)
    steps: list[Any] = field(default_factory=list)
    apdus: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "ok": self.ok, "refused": self.refused, "error": self.error,
                "backend": self.backend, "card": self.card.to_json() if self.card else None,
                "operations": self.operations, "steps": [s.to_json() for s in self.steps],
                "apdus": self.apdus, "seconds": round(self.seconds, 3)}


async def run_scenario(backend: RigBackend, options: RigOptions) -> ScenarioResult:
    """Run one scenario on `backend` (which the caller opened and closes)."""
    if options.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {options.scenario!r} (one of {', '.join(SCENARIOS)})")
    counter = Counting(backend)
    log = StepLog(counter, options.out)
    result = ScenarioResult(options.scenario, {"name": backend.name, "description": backend.description})
    log.note(f"scenario {options.scenario} on {backend.name}: {backend.description}")
    try:
        result.card = await asyncio.to_thread(_probe, counter, log, options)
        if options.scenario in STATE_CHANGING:
            verdict = result.card.verdict
            assert verdict is not None
            if not verdict.test_card and not options.allow_any_card:
                result.refused = True
                result.error = (f"refused: {verdict.reason}. State-changing scenarios run only on a test card; "
                                "--i-know-this-changes-the-card overrides this")
                log.note(result.error)
            else:
                await _state_changing(counter, log, options, result)
        result.ok = not result.refused and result.error is None
    except (GatewayError, CheckFailed, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:   # a bug of the rig or of the gateway under test: a result, with the trace in the log
        log_module.exception("scenario %s", options.scenario)
        result.error = f"internal error: {type(exc).__name__}: {exc}"
    finally:
        result.steps = log.steps
        result.apdus = log.apdus
        result.seconds = log.seconds
    log.note(f"scenario {options.scenario} " + ("succeeded" if result.ok else f"FAILED: {result.error}")
             + f" ({result.apdus} APDUs, {result.seconds:.2f}s)")
    return result


def _probe(counter: Counting, log: StepLog, options: RigOptions) -> CardFacts:
    device_info = getattr(counter.inner, "device_info", None)
    if callable(device_info):        # a modem: what it says about itself (AT commands, no APDU)
        with log.step("modem status", soft=True) as s:
            info = device_info()
            s.data = {"imei": info.imei, "plmn": info.plmn, "signalDbm": info.signal_dbm}
            s.detail = f"IMEI {info.imei or '?'}, PLMN {info.plmn or 'none'}, signal " + (
                f"{info.signal_dbm} dBm" if info.signal_dbm is not None else "unknown")
    isdr = IsdR(counter)
    with log.step("select ISD-R") as s:
        isdr.open()
        s.detail = f"logical channel {isdr.channel}"
    try:
        return probe_card(isdr, log, options.pki.ci.cert)
    finally:
        with log.step("close channel"):
            isdr.close()


# euiccResult codes of the PSMOs (SGP.32 §5.9.x EnableResult, DisableResult, DeleteResult)
RESULT_NAMES = {0: "ok", 1: "iccidOrAidNotFound", 2: "profileNotInExpectedState", 3: "disallowedByPolicy",
                5: "catBusy", 127: "undefinedError"}
NOTIFYING = ("enableResult", "disableResult", "deleteResult")


def psmo_results(result: Any) -> list[tuple[str, int]]:
    """(operation, code) of each PSMO in an EuiccPackageResult as the eIM peer shows it; [] otherwise."""
    if not isinstance(result, dict):
        return []
    signed = result.get("euiccPackageResultSigned")
    if not isinstance(signed, dict):
        return []
    items = signed.get("euiccPackageResultDataSigned", {}).get("euiccResult", [])
    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and len(item) == 1:
            ((op, code),) = item.items()
            if isinstance(code, int):
                out.append((str(op), code))
    return out


def _local_ports(facts: CardFacts) -> tuple[int, int]:
    """Ports the in-process peers must use for a card set up by an earlier run (0: any).

    The card addresses the eIM by the FQDN in its eIM configuration, and a profile's
    notifications go to the SM-DP+ address it was installed from.
    """
    eim = next((p for p in (loopback_port(e.get("eimFqdn")) for e in facts.eims) if p), None)
    addresses = [a for p in facts.profiles for a in p.get("notificationAddresses", [])]
    addresses += [n["address"] for n in facts.notifications]
    smdp = next((p for p in map(loopback_port, addresses) if p and p != eim), None)
    return eim or 0, smdp or 0


def card_now(backend: Counting) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(profiles, pending notifications) as the card reports them now."""
    with IsdR(backend) as isdr:
        return read_profiles(isdr), read_notifications(isdr)


async def _state_changing(counter: Counting, log: StepLog, options: RigOptions, result: ScenarioResult) -> None:
    facts = result.card
    assert facts is not None
    if facts.eid is None:
        raise CheckFailed("the card did not give its EID (GetEID): the gateway cannot address it")
    eid = facts.eid
    ca_file = str(options.pki.tls_trust_path)
    async with contextlib.AsyncExitStack() as stack:
        if options.eim_url and options.smdp_url:
            eim_url, smdp_url = options.eim_url, options.smdp_url
            log.note(f"peers: eIM {eim_url}, SM-DP+ {smdp_url}")
        elif options.eim_url or options.smdp_url:
            raise CheckFailed("give both --eim and --smdp, or neither (the rig then starts its own peers)")
        else:
            eim_port, smdp_port = _local_ports(facts)
            eim_url, smdp_url = await stack.enter_async_context(
                local_peers(options.pki, eim_port=eim_port, smdp_port=smdp_port))
            log.note(f"peers started in this process: eIM {eim_url}, SM-DP+ {smdp_url}")
        admin = await stack.enter_async_context(PeerAdmin(eim_url, smdp_url, ca_file))
        with log.step("eIM knows the eUICC") as s:
            identity = await admin.eim_identity()
            eim_id = identity["eimId"]
            ours = next((e for e in facts.eims if e["eimId"] == eim_id), None)
            initial = None
            if ours is None and facts.eims:
                raise CheckFailed(f"the card's eIMs are {', '.join(e['eimId'] for e in facts.eims)}, not the rig's "
                                  f"eIM {eim_id}: it would refuse the rig's packages")
            if ours is not None and ours.get("eimFqdn") not in (None, identity["eimFqdn"]):
                raise CheckFailed(f"the card knows eIM {eim_id} at {ours['eimFqdn']}, the eIM peer is at "
                                  f"{identity['eimFqdn']}: run the peers there (python -m hil.peers.eim --port ...)")
            if ours is None:
                initial = codec.decode("EimConfigurationData", bytes.fromhex(identity["eimConfigurationData"]))
                if options.download_mode == "direct":
                    initial.pop("indirectProfileDownload", None)
                elif options.download_mode == "indirect":
                    initial["indirectProfileDownload"] = None
            elif options.download_mode is not None and options.download_mode != (
                    "indirect" if ours.get("indirectProfileDownload") else "direct"):
                raise CheckFailed(f"the card's configuration of eIM {eim_id} already sets "
                                  f"{'indirect' if ours.get('indirectProfileDownload') else 'direct'} download; "
                                  "--download-mode applies only when the card gets the eIM's configuration")
            indirect = "indirectProfileDownload" in (initial if initial is not None else ours or {})
            # the eIM checks a certificate against the test CI: a non-test card's (run with the
            # override) is not given, and the eIM learns it from the card's own answers if it can
            trusted = facts.verdict is not None and facts.verdict.test_card
            await admin.register(eid, certificates=facts.certificates if trusted else {},
                                 counter=None if ours is None else ours.get("counterValue"))
            s.detail = (f"eIM {eim_id} at {identity['eimFqdn']}; "
                        + ("the gateway adds it to the card (AddInitialEim)" if initial is not None
                           else "already on the card")
                        + ("; downloads through the eIM (indirect)" if indirect else "; downloads direct (ES9+)"))
        local_modem = None
        if options.agent == "gateway":
            if not isinstance(counter.inner, SerialBackend):
                raise CheckFailed("--agent gateway drives a modem: it needs a serial backend")
            local_modem = counter.inner.modem
        elif options.agent != "device":
            raise CheckFailed(f"unknown agent {options.agent!r} (device or gateway)")
        gw: RigGateway | DaemonRig
        if options.link == "coap":
            if local_modem is not None:
                raise CheckFailed("--agent gateway runs without a device link: use it with --link memory")
            with log.step("gateway daemon up") as s:
                gw = await stack.enter_async_context(DaemonRig(counter, eid, tls_ca_file=ca_file, eim_id=eim_id,
                                                               eim_fqdn=identity["eimFqdn"], initial_eim=initial))
                s.detail = "ipae-gateway run's Daemon, CoAP/DTLS link on loopback"
        elif options.link == "memory":
            gw = await stack.enter_async_context(RigGateway(counter, eid, tls_ca_file=ca_file, eim_id=eim_id,
                                                            eim_fqdn=identity["eimFqdn"], initial_eim=initial,
                                                            local_modem=local_modem))
        else:
            raise CheckFailed(f"unknown link {options.link!r} (memory or coap)")
        log.note("device side: " + ("the gateway's own serial device (LocalModemDevice) on the modem"
                                    if local_modem is not None else
                                    f"the reference device agent over the {options.link} link"))
        ops = _Operations(counter, log, admin, gw, eid, options.timeout_s, result)
        iccid = options.iccid
        scenario = options.scenario
        if scenario in ("download", "lifecycle"):
            iccid = await ops.download()
        if iccid is None:
            raise CheckFailed(f"{scenario} needs --iccid (the profiles on the card: "
                              f"{', '.join(p.get('iccid', '?') for p in facts.profiles) or 'none'})")
        if scenario in ("enable", "lifecycle"):
            await ops.psmo("enable", [{"op": "enable", "iccid": iccid}], iccid, expect="enabled")
        if scenario in ("disable", "lifecycle"):
            await ops.psmo("disable", [{"op": "disable", "iccid": iccid}], iccid, expect="disabled")
        if scenario in ("delete", "lifecycle"):
            profiles, _ = await asyncio.to_thread(card_now, counter)
            current = next((p for p in profiles if p.get("iccid") == iccid), None)
            batch = [{"op": "delete", "iccid": iccid}]
            if current is not None and current.get("state") == "enabled":
                batch.insert(0, {"op": "disable", "iccid": iccid})   # an enabled profile cannot be deleted
            await ops.psmo("delete", batch, iccid, expect=None)
        log.note(f"gateway: {gw.totals.wakeups} wake-ups, {gw.totals.exchanges} round trips, "
                 f"{gw.totals.batches} batches, refreshes {gw.refreshes or 'none'}")


@dataclass
class _Operations:
    counter: Counting
    log: StepLog
    admin: PeerAdmin
    gw: RigGateway | DaemonRig
    eid: bytes
    timeout_s: float
    result: ScenarioResult

    async def download(self) -> str:
        with self.log.step("download: order at the SM-DP+") as s:
            order = await self.admin.order(self.eid)
            s.detail = f"ICCID {order['iccid']}, activation code {order['activationCode']}"
        iccid = str(order["iccid"])
        await self._operate("download", lambda: self.admin.download(self.eid, order["activationCode"]),
                            iccid, expect="installed")
        return iccid

    async def psmo(self, name: str, operations: list[dict[str, Any]], iccid: str, *, expect: str | None) -> None:
        await self._operate(name, lambda: self.admin.psmo(self.eid, operations), iccid, expect=expect)

    async def _operate(self, name: str, order: Callable[[], Awaitable[dict[str, Any]]], iccid: str, *,
                       expect: str | None) -> None:
        record: dict[str, Any] = {"name": name, "iccid": iccid, "ok": False}
        self.result.operations.append(record)
        before = await self.admin.delivered(self.eid)
        totals = self.gw.totals
        wakeups, exchanges = totals.wakeups, totals.exchanges
        with self.log.step(f"{name}: eIM queues the package") as s:
            package = await order()
            s.detail = f"package {package['packageId']} ({package['kind']})"
        with self.log.step(f"{name}: gateway runs it on the card") as s:
            package = await self._wake_until(lambda: self._settled(package["packageId"]), f"{name} result")
            s.detail = (f"{totals.wakeups - wakeups} wake-ups, {totals.exchanges - exchanges} round trips; "
                        f"eIM: {package['state']}")
            record["packageState"] = package["state"]
            if package["state"] != "done":
                raise CheckFailed(f"the eIM recorded {package['state']}: {package.get('result')}")
            results = psmo_results(package.get("result"))
            record["euiccResults"] = results
            if results:
                s.detail += "; eUICC: " + ", ".join(f"{op} {RESULT_NAMES.get(code, code)}" for op, code in results)
            failed = [(op, code) for op, code in results if code != 0]
            if failed:
                raise CheckFailed("the eUICC refused: " + ", ".join(f"{op} {RESULT_NAMES.get(code, code)} ({code})"
                                                                  for op, code in failed))
        # each profile change leaves one notification on the card for the peers
        expected = 1 if not results else sum(1 for op, _ in results if op in NOTIFYING)
        with self.log.step(f"{name}: notifications delivered") as s:
            await self._wake_until(lambda: self._notifications_delivered(before + expected), f"{name} notifications")
            delivered = await self.admin.delivered(self.eid)
            s.detail = f"{delivered - before} new at the peers, none pending on the card"
            record["notificationsDelivered"] = delivered - before
        with self.log.step(f"{name}: card state") as s:
            profiles, _ = await asyncio.to_thread(card_now, self.counter)
            current = next((p for p in profiles if p.get("iccid") == iccid), None)
            if expect is None and current is not None:
                raise CheckFailed(f"profile {iccid} is still on the card ({current.get('state')})")
            if expect == "installed" and current is None:
                raise CheckFailed(f"profile {iccid} is not on the card")
            if expect in ("enabled", "disabled") and (current is None or current.get("state") != expect):
                raise CheckFailed(f"profile {iccid} is {current.get('state') if current else 'absent'}, "
                                  f"not {expect}")
            s.detail = f"profile {iccid} " + (current.get("state", "present") if current else "gone")
        record.update(ok=True, wakeups=totals.wakeups - wakeups, roundTrips=totals.exchanges - exchanges)

    async def _settled(self, package_id: Any) -> dict[str, Any] | None:
        package = await self.admin.package(self.eid, package_id)
        return None if package["state"] in OPEN_STATES else package

    async def _notifications_delivered(self, at_least: int) -> bool | None:
        _, pending = await asyncio.to_thread(card_now, self.counter)
        if pending:
            return None
        return True if await self.admin.delivered(self.eid) >= at_least else None

    async def _wake_until(self, done: Callable[[], Awaitable[Any]], what: str) -> Any:
        """Wake the device until `done()` has an answer; the pause between wake-ups grows to 1 s
        so a rig waiting on an unreachable peer does not hammer a real card."""
        deadline = time.monotonic() + self.timeout_s
        pause = 0.05
        while True:
            await self.gw.wake()
            outcome = await done()
            if outcome is not None:
                return outcome
            if time.monotonic() > deadline:
                problems = "; ".join(self.gw.totals.problems[-3:]) or "no error reported"
                raise CheckFailed(f"no {what} after {self.timeout_s:.0f} s ({problems})")
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 2)
