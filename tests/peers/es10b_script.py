"""A minimal IPA for the peer tests: ES10b calls to a software eUICC, ES9+/ESipa to the peers.

Not a test module. `Card` makes ES10b calls on tests/hil's `Channel` to a software eUICC
(hil.euicc.SoftEuicc: one logical channel, the ISD-R selected, STORE DATA with GET RESPONSE
chaining, all with gateway.spec.apdu); the download functions run the SGP.22 §3.1.3 sequence against the SM-DP+ directly over ES9+
(gateway.backhaul.es9p_client) or through the eIM over ESipa (ASN.1 binding), relaying every
signed blob as the exact bytes received. No gateway code beyond the codecs and clients.
"""

from __future__ import annotations

from typing import Any

from gateway.backhaul import es9p_client, esipa_client
from gateway.backhaul.http import BackhaulHttp, Server
from gateway.spec import bpp as bpp_split
from gateway.spec import codec, es9p, tlv
from tests.hil.test_euicc_support import Channel
from tests.hil.test_euicc_support import raw_child as child   # noqa: F401  (for the peer tests)

DEVICE_INFO = {"tac": bytes.fromhex("35290611"), "deviceCapabilities": {}}


class Card(Channel):
    """ES10b calls on tests/hil's channel to the ISD-R, each answer as the exact bytes received."""

    def es10(self, request_type: str, value: Any) -> bytes:
        return self.call(codec.encode(request_type, value))

    def challenge_and_info1(self) -> tuple[bytes, bytes]:
        challenge = codec.decode("GetEuiccChallengeResponse",
                                 self.es10("GetEuiccChallengeRequest", {}))["euiccChallenge"]
        return challenge, self.es10("GetEuiccInfo1Request", {})

    def authenticate_server(self, server_signed1: bytes, server_signature1: bytes, ci_pkid: bytes,
                            server_certificate: bytes, matching_id: str | None) -> bytes:
        ctx: dict[str, Any] = {"deviceInfo": DEVICE_INFO}
        if matching_id is not None:
            ctx["matchingId"] = matching_id
        return self.es10("AuthenticateServerRequest", {
            "serverSigned1": exact("ServerSigned1", server_signed1),
            "serverSignature1": server_signature1, "euiccCiPKIdToBeUsed": ci_pkid,
            "serverCertificate": server_certificate,
            "ctxParams1": ("ctxParamsForCommonAuthentication", ctx)})

    def prepare_download(self, smdp_signed2: bytes, smdp_signature2: bytes, smdp_certificate: bytes) -> bytes:
        return self.es10("PrepareDownloadRequest", {
            "smdpSigned2": exact("SmdpSigned2", smdp_signed2),
            "smdpSignature2": smdp_signature2, "smdpCertificate": smdp_certificate})

    def load_bpp(self, bpp: bytes) -> bytes:
        """Each ES8+ segment in its own STORE DATA sequence; the ProfileInstallationResult."""
        segments = bpp_split.segments(bpp)
        for index, segment in enumerate(segments):
            result = bpp_split.segment_response(index, len(segments), self.call(segment), 0x9000)
            if result is not None:
                return result
        raise AssertionError("no ProfileInstallationResult")

    def cancel_session(self, transaction_id: bytes, reason: int) -> bytes:
        return self.es10("CancelSessionRequest", {"transactionId": transaction_id, "reason": reason})

    def pending_notifications(self) -> list[bytes]:
        """Exact bytes of each PendingNotification (RetrieveNotificationsList, no criteria)."""
        data = self.es10("RetrieveNotificationsListRequest", {})
        outer = tlv.read_single(data)
        (choice,) = tlv.children(data, outer)
        if choice.tag != 0xA0:
            return []
        return [c.raw_of(data) for c in tlv.children(data, choice)]

    def remove_notification(self, seq_number: int) -> None:
        self.es10("NotificationSentRequest", {"seqNumber": seq_number})


def exact(type_name: str, der: bytes) -> Any:
    """The decoded value of a signed structure, checked to re-encode to exactly the bytes received."""
    value = codec.decode(type_name, der)
    assert codec.encode(type_name, value) == der, f"{type_name} would not be relayed byte-exact"
    return value


async def direct_download(card: Card, http: BackhaulHttp, smdp: Server, smdp_address: str,
                          matching_id: str | None) -> bytes:
    """SGP.22 §3.1.3 over ES9+; returns the ProfileInstallationResult (BF37) as the eUICC sent it."""
    challenge, info1 = card.challenge_and_info1()
    init = await es9p_client.initiate_authentication(
        http, smdp, es9p.InitiateAuthenticationRequest(challenge, info1, smdp_address))
    auth_server = card.authenticate_server(init.server_signed1, init.server_signature1,
                                           init.euicc_ci_pkid_to_be_used, init.server_certificate,
                                           matching_id)
    auth = await es9p_client.authenticate_client(
        http, smdp, es9p.AuthenticateClientRequest(init.transaction_id, auth_server))
    prepare = card.prepare_download(auth.smdp_signed2, auth.smdp_signature2, auth.smdp_certificate)
    bpp = await es9p_client.get_bound_profile_package(
        http, smdp, es9p.GetBoundProfilePackageRequest(init.transaction_id, prepare))
    return card.load_bpp(bpp.bound_profile_package)


async def deliver_notifications_es9(card: Card, http: BackhaulHttp, smdp: Server) -> int:
    """Send every pending profile notification to the SM-DP+, removing each once accepted."""
    sent = 0
    for notification in card.pending_notifications():
        await es9p_client.handle_notification(http, smdp, es9p.HandleNotificationRequest(notification))
        card.remove_notification(_seq_number(notification))
        sent += 1
    return sent


def _seq_number(notification: bytes) -> int:
    kind, value = codec.decode("PendingNotification", notification)
    if kind == "profileInstallationResult":
        return int(value["profileInstallationResultData"]["notificationMetadata"]["seqNumber"])
    return int(value["tbsOtherNotification"]["seqNumber"])


async def esipa(http: BackhaulHttp, eim: Server, message: tuple[str, Any]) -> tuple[str, Any] | None:
    """One ESipa exchange on the ASN.1 binding: decoded EsipaMessageFromEimToIpa (or None for 204)."""
    body = await esipa_client.exchange_asn1(http, eim, codec.encode("EsipaMessageFromIpaToEim", message))
    return None if body is None else codec.decode("EsipaMessageFromEimToIpa", body)


async def esipa_raw(http: BackhaulHttp, eim: Server, der: bytes) -> bytes | None:
    return await esipa_client.exchange_asn1(http, eim, der)
