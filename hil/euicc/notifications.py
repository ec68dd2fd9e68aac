"""Notifications (SGP.22 §2.6, §5.7.9-5.7.11; SGP.32 §5.9.x RetrieveNotificationsList).

Each install, enable, disable and delete leaves a signed pending notification with the next
sequence number: a ProfileInstallationResult (install, addressed to the SM-DP+) or an
OtherSignedNotification (tbsOtherNotification = NotificationMetadata, signed, with the eUICC
and EUM certificates) for the events the Profile's notificationConfigurationInfo asks for.
EuiccPackageResults share the sequence-number space. Everything stays until
RemoveNotificationFromList names its sequence number. Lists of stored notifications are
answered with the stored bytes as they were signed, never re-encoded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.spec import codec, tlv
from hil.euicc import signed_data
from hil.euicc.dispatch import es10
from hil.euicc.info import bits, has_bit
from hil.euicc.state import Notification, Profile

if TYPE_CHECKING:
    from hil.euicc.euicc import SoftEuicc

EVENT_BITS = {"install": 0, "enable": 1, "disable": 2, "delete": 3}


def store_notification(euicc: SoftEuicc, notification: Notification) -> None:
    euicc.state.notifications.append(notification)


def profile_event(euicc: SoftEuicc, profile: Profile, event: str) -> Notification | None:
    """The signed OtherSignedNotification for `event` on `profile`, if its configuration wants one."""
    address = next((addr for events, addr in profile.notification_config if event in events), None)
    if address is None:
        return None
    seq = euicc.state.take_seq_number()
    metadata = {"seqNumber": seq, "profileManagementOperation": bits(EVENT_BITS[event]),
                "notificationAddress": address, "iccid": profile.iccid}
    tbs = codec.encode("NotificationMetadata", metadata)
    signature = euicc.sign(signed_data.notification_signature_input(tbs))
    der = codec.encode("OtherSignedNotification", {
        "tbsOtherNotification": metadata, "euiccNotificationSignature": signature,
        "euiccCertificate": euicc.identity.certificate_der,
        "eumCertificate": euicc.identity.eum_certificate_der})
    notification = Notification(seq_number=seq, event=event, address=address, iccid=profile.iccid, der=der)
    store_notification(euicc, notification)
    return notification


def metadata_of(n: Notification) -> dict[str, Any]:
    value: dict[str, Any] = {"seqNumber": n.seq_number, "profileManagementOperation": bits(EVENT_BITS[n.event]),
                             "notificationAddress": n.address}
    if n.iccid:
        value["iccid"] = n.iccid
    return value


def profile_notifications(euicc: SoftEuicc) -> list[Notification]:
    return [n for n in euicc.state.notifications if n.event in EVENT_BITS]


def package_results(euicc: SoftEuicc) -> list[Notification]:
    return [n for n in euicc.state.notifications if n.event == "euiccPackageResult"]


def _matches(n: Notification, operations: tuple[bytes, int] | None) -> bool:
    return operations is None or has_bit(operations, EVENT_BITS[n.event])


def wrap(tag: int, items: list[bytes]) -> bytes:
    body = b"".join(items)
    return tlv.header(tag, len(body)) + body


@es10(0xBF28, "ListNotification", "ListNotificationRequest")
def list_notification(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    operations = value.get("profileManagementOperation")
    found = [metadata_of(n) for n in profile_notifications(euicc) if _matches(n, operations)]
    return codec.encode("ListNotificationResponse", ("notificationMetadataList", found))


@es10(0xBF2B, "RetrieveNotificationsList", "RetrieveNotificationsListRequest")
def retrieve_notifications_list(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    criteria = value.get("searchCriteria")
    if criteria is not None and criteria[0] == "euiccPackageResults":
        return wrap(0xBF2B, [wrap(0xA2, [n.der for n in package_results(euicc)])])
    if criteria is None:
        chosen = profile_notifications(euicc)
    elif criteria[0] == "seqNumber":
        chosen = [n for n in euicc.state.notifications if n.seq_number == criteria[1]]
        if chosen and chosen[0].event == "euiccPackageResult":
            return wrap(0xBF2B, [wrap(0xA2, [chosen[0].der])])
    else:
        chosen = [n for n in profile_notifications(euicc) if _matches(n, criteria[1])]
    return wrap(0xBF2B, [wrap(0xA0, [n.der for n in chosen])])


@es10(0xBF30, "RemoveNotificationFromList", "NotificationSentRequest")
def remove_notification_from_list(euicc: SoftEuicc, request: bytes, value: Any) -> bytes:
    seq = value["seqNumber"]
    before = len(euicc.state.notifications)
    euicc.state.notifications = [n for n in euicc.state.notifications if n.seq_number != seq]
    if len(euicc.state.notifications) == before:
        return codec.encode("NotificationSentResponse", {"deleteNotificationStatus": 1})
    euicc.commit()
    return codec.encode("NotificationSentResponse", {"deleteNotificationStatus": 0})
