"""Read-only probes: what the card is, which SGP.32 version, its eIM configuration, its profiles.

Theory of operation. `probe_card` opens one logical channel to the ISD-R and calls only ES10b
functions that change nothing on the card (SGP.22 §5.7 / SGP.32 §5.9): GetEID,
GetEUICCInfo1, GetEUICCInfo2, GetEimConfigurationData, ProfileInfoList (GetProfilesInfo),
ListNotification and GetCerts. A function the card lacks (an SGP.22 consumer eUICC has no
GetEimConfigurationData) is logged as a failed step and the probe goes on; only a card
whose ISD-R cannot be selected, or which does not answer GetEUICCInfo1, fails the probe.

`check_test_card` decides whether state-changing scenarios may run: the card is a *test
card* only if GetCerts returns an EUM certificate signed by the test CI of the rig's PKI
directory and an eUICC certificate signed by that EUM, for this EID. Anything else (a
production CI, a card without GetCerts) is not proven to be a test card.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from gateway.errors import DecodeError
from hil.peers.common import iccid_to_str
from hil.rig.isdr import IsdR
from hil.rig.report import StepLog

NOTIFICATION_EVENTS = ("install", "enable", "disable", "delete")
PROFILE_STATES = {0: "disabled", 1: "enabled"}


def version(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def bits(value: tuple[bytes, int], names: tuple[str, ...]) -> list[str]:
    data, count = value
    out = []
    for i in range(count):
        if data[i // 8] & (0x80 >> (i % 8)):
            out.append(names[i] if i < len(names) else f"bit{i}")
    return out


@dataclass
class TestCardVerdict:
    test_card: bool
    reason: str
    eum_subject: str | None = None
    euicc_subject: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"testCard": self.test_card, "reason": self.reason, "eumSubject": self.eum_subject,
                "euiccSubject": self.euicc_subject}


@dataclass
class CardFacts:
    """What the probes found (None/empty where the card did not answer)."""

    eid: bytes | None = None
    info1: dict[str, Any] = field(default_factory=dict)
    info2: dict[str, Any] = field(default_factory=dict)
    eims: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    certificates: dict[str, bytes] = field(default_factory=dict)
    verdict: TestCardVerdict | None = None

    def profile(self, iccid: str) -> dict[str, Any] | None:
        return next((p for p in self.profiles if p.get("iccid") == iccid), None)

    def to_json(self) -> dict[str, Any]:
        return {"eid": self.eid.hex().upper() if self.eid else None, "euiccInfo1": self.info1,
                "euiccInfo2": self.info2, "eims": self.eims, "profiles": self.profiles,
                "notifications": self.notifications,
                "testCard": self.verdict.to_json() if self.verdict else None}


def describe_info1(value: dict[str, Any]) -> dict[str, Any]:
    return {"svn": version(value["svn"]),
            "ciPkidsForVerification": [k.hex().upper() for k in value["euiccCiPKIdListForVerification"]],
            "ciPkidsForSigning": [k.hex().upper() for k in value["euiccCiPKIdListForSigning"]]}


def describe_info2(value: dict[str, Any]) -> dict[str, Any]:
    iot = value.get("iotSpecificInfo")
    out: dict[str, Any] = {
        "profileVersion": version(value["profileVersion"]), "svn": version(value["svn"]),
        "firmware": version(value["euiccFirmwareVer"]), "ppVersion": version(value["ppVersion"]),
        "sasAccreditation": value["sasAcreditationNumber"],
        "sgp32Versions": [version(v) for v in iot["iotVersion"]] if iot else [],
        "ipaMode": {0: "IPAd", 1: "IPAe"}.get(value.get("ipaMode", -1)),
        "category": {0: "other", 1: "basic", 2: "medium", 3: "contactless"}.get(value.get("euiccCategory", -1)),
        "resources": _resources(value["extCardResource"]),
    }
    if iot:
        out["fallbackSupported"] = "fallbackSupported" in iot
    return out


def _resources(raw: bytes) -> dict[str, int]:
    """extCardResource (SGP.22 §5.7.8): 81 installed applications, 82 free NVM, 83 free RAM."""
    from gateway.spec import tlv

    names = {0x81: "installedApplications", 0x82: "freeNonVolatileMemory", 0x83: "freeVolatileMemory"}
    out: dict[str, int] = {}
    try:
        for t in tlv.iter_tlvs(raw):
            if t.tag in names:
                out[names[t.tag]] = int.from_bytes(raw[t.value_start:t.end], "big")
    except DecodeError:
        pass
    return out


def describe_eim(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"eimId": value["eimId"]}
    for key in ("eimFqdn", "eimIdType", "counterValue", "associationToken"):
        if key in value:
            out[key] = value[key]
    if "eimPublicKeyData" in value:
        out["eimPublicKeyData"] = value["eimPublicKeyData"][0]
    if "indirectProfileDownload" in value:
        out["indirectProfileDownload"] = True
    return out


def describe_profile(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "iccid" in value:
        out["iccid"] = iccid_to_str(value["iccid"])
    if "profileState" in value:
        state = value["profileState"]
        out["state"] = PROFILE_STATES.get(state, str(state)) if isinstance(state, int) else state
    for key, name in (("profileName", "name"), ("serviceProviderName", "provider"),
                      ("profileNickname", "nickname"), ("profileClass", "class")):
        if key in value:
            out[name] = value[key]
    if "isdpAid" in value:
        out["isdpAid"] = value["isdpAid"].hex().upper()
    addresses = sorted({n["notificationAddress"] for n in value.get("notificationConfigurationInfo", [])})
    if addresses:
        out["notificationAddresses"] = addresses
    return out


def describe_notification(value: dict[str, Any]) -> dict[str, Any]:
    out = {"seqNumber": value["seqNumber"],
           "events": bits(value["profileManagementOperation"], NOTIFICATION_EVENTS),
           "address": value["notificationAddress"]}
    if "iccid" in value:
        out["iccid"] = iccid_to_str(value["iccid"])
    return out


def read_profiles(isdr: IsdR) -> list[dict[str, Any]]:
    _, value = isdr.call("GetProfilesInfo", {})
    kind, body = value
    if kind != "profileInfoListOk":
        raise DecodeError(f"ProfileInfoList answered {kind} {body}", type_name="ProfileInfoListResponse")
    return [describe_profile(p) for p in body]


def read_notifications(isdr: IsdR) -> list[dict[str, Any]]:
    _, value = isdr.call("ListNotification", {})
    kind, body = value
    if kind != "notificationMetadataList":
        raise DecodeError(f"ListNotification answered {kind} {body}", type_name="ListNotificationResponse")
    return [describe_notification(n) for n in body]


def check_test_card(certificates: dict[str, bytes], eid: bytes | None, ci: x509.Certificate) -> TestCardVerdict:
    """A test card: GetCerts chain eUICC -> EUM -> the rig's test CI, and the eUICC certificate names this EID."""
    if not certificates:
        return TestCardVerdict(False, "the card did not give its certificates (GetCerts): not proven a test card")
    try:
        eum = x509.load_der_x509_certificate(certificates["eumCertificate"])
        euicc = x509.load_der_x509_certificate(certificates["euiccCertificate"])
    except (KeyError, ValueError) as exc:
        return TestCardVerdict(False, f"unreadable certificates from GetCerts: {exc}")
    subjects = dict(eum_subject=eum.subject.rfc4514_string(), euicc_subject=euicc.subject.rfc4514_string())
    try:
        eum.verify_directly_issued_by(ci)
    except (ValueError, TypeError, InvalidSignature):
        return TestCardVerdict(False, f"the EUM certificate ({subjects['eum_subject']}) is not issued by the test CI "
                               f"({ci.subject.rfc4514_string()})", **subjects)
    try:
        euicc.verify_directly_issued_by(eum)
    except (ValueError, TypeError, InvalidSignature):
        return TestCardVerdict(False, "the eUICC certificate is not issued by its EUM certificate", **subjects)
    serials = euicc.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)
    named = serials[0].value if serials else None
    if isinstance(named, bytes):
        named = named.decode("ascii", "replace")
    if eid is not None and named is not None and named.upper() != eid.hex().upper():
        return TestCardVerdict(False, f"the eUICC certificate names EID {named}, the card "
                               f"{eid.hex().upper()}", **subjects)
    return TestCardVerdict(True, "eUICC -> EUM -> test CI chain verified", **subjects)


def probe_card(isdr: IsdR, log: StepLog, ci: x509.Certificate) -> CardFacts:
    """Every read-only probe, each its own step; GetEUICCInfo1 is the one that must answer."""
    facts = CardFacts()
    with log.step("GetEID", soft=True) as s:
        _, value = isdr.call("GetEID", {"tagList": b"\x5a"})
        facts.eid = value["eidValue"]
        s.detail = f"EID {facts.eid.hex().upper()}"
    with log.step("GetEUICCInfo1") as s:
        _, value = isdr.call("GetEUICCInfo1", {})
        facts.info1 = describe_info1(value)
        s.detail = f"SGP.22 v{facts.info1['svn']}, CI {', '.join(facts.info1['ciPkidsForSigning']) or 'none'}"
    with log.step("GetEUICCInfo2", soft=True) as s:
        _, value = isdr.call("GetEUICCInfo2", {})
        facts.info2 = describe_info2(value)
        i2 = facts.info2
        s.detail = (f"SGP.32 {'/'.join(i2['sgp32Versions']) or 'none (not an IoT eUICC)'}, "
                    f"firmware {i2['firmware']}, {i2['ipaMode'] or 'no ipaMode'}")
    with log.step("GetEimConfigurationData", soft=True) as s:
        _, value = isdr.call("GetEimConfigurationData", {})
        facts.eims = [describe_eim(e) for e in value.get("eimConfigurationDataList", [])]
        s.detail = ", ".join(f"{e['eimId']} at {e.get('eimFqdn', '?')} (counter {e.get('counterValue', '?')})"
                             for e in facts.eims) or "no eIM configured"
    with log.step("ProfileInfoList", soft=True) as s:
        facts.profiles = read_profiles(isdr)
        s.detail = ", ".join(f"{p.get('iccid', '?')} {p.get('state', '?')}" for p in facts.profiles) or "no profile"
    with log.step("ListNotification", soft=True) as s:
        facts.notifications = read_notifications(isdr)
        s.detail = f"{len(facts.notifications)} pending"
    with log.step("GetCerts", soft=True) as s:
        _, value = isdr.call("GetCerts", {})
        kind, body = value
        if kind == "certs":
            facts.certificates = dict(body)
            s.detail = "EUM and eUICC certificates"
        else:
            s.ok, s.detail = False, f"getCertsError {body}"
    facts.verdict = check_test_card(facts.certificates, facts.eid, ci)
    log.note(("test card: " if facts.verdict.test_card else "NOT a test card: ") + facts.verdict.reason)
    return facts
