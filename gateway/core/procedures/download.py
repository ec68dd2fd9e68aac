"""ProfileDownloadTrigger (SGP.32 §2.11.3, §3.2): a profile download ordered by the eIM.

Theory of operation. Direct download talks ES9+ to the SM-DP+ named by the activation
code (or the default SM-DP+, or the one an SM-DS event names: contactSmds first
authenticates with the SM-DS over ES11 -- CHALLENGE, INITIATING, AUTHENTICATING,
EVENT_RETRIEVAL -- and takes the first event's SM-DP+ and eventId); indirect download, chosen when the eIM's configuration on
the eUICC carries indirectProfileDownload, runs the same three server calls over ESipa
through the eIM. The eUICC side is the SGP.22 sequence, folded so that each exchange
with the device carries everything that needs no decision in between:

    INITIAL --start--> CHALLENGE        [GetEuiccChallenge, GetEUICCInfo1]
    CHALLENGE --device--> INITIATING    InitiateAuthentication
    INITIATING --answer--> AUTHENTICATING        [AuthenticateServer]
    AUTHENTICATING --device--> AUTHENTICATING_CLIENT   AuthenticateClient
    AUTHENTICATING_CLIENT --answer--> PREPARING   [PrepareDownload]
    PREPARING --device--> FETCHING      GetBoundProfilePackage
    FETCHING --answer--> LOADING        [every BPP segment, stop on early data]
    LOADING --device--> DONE            ProfileInstallationResult

Any failure once AuthenticateServer has been sent leads to CANCELLING: CancelSession on the
eUICC (sent once more if the eUICC did not run it), then ERROR, so no eUICC is left
mid-session (SGP.22 §3.0.2); its signed answer goes to the server as a *delivery* (the
procedure's Finish carries the CancelSession request: procedures/notifications.py), retried
until acknowledged like a notification, so a server unreachable for hours still hears it. When the
eUICC has no session left to cancel (it finished or lost it: a result lost on the way, a
power loss), RECOVERING looks for this transaction's ProfileInstallationResult among its
pending notifications: found, the download ends as that result says; absent, it failed. A
failure before AuthenticateServer ends in ERROR at once. Signed
server data is spliced into the ES10b requests as received (gateway.core.es10).
"""

from __future__ import annotations

from typing import Any

from gateway.core import es10
from gateway.core.config import EngineConfig
from gateway.core.procedures.base import (
    ANSWER,
    DEVICE,
    DONE,
    ERROR,
    FAILED,
    FAILURE,
    INITIAL,
    START,
    Answer,
    Call,
    DeviceAnswer,
    DeviceWork,
    Env,
    Failure,
    Finish,
    Note,
    Output,
    Procedure,
    Reply,
    Request,
    row,
)
from gateway.errors import DecodeError, FunctionFailed, RemoteProtocolError
from gateway.spec import bpp, codec, es9p, es11, signed, tlv

CHALLENGE = "CHALLENGE"
INITIATING = "INITIATING"
AUTHENTICATING = "AUTHENTICATING"
AUTHENTICATING_CLIENT = "AUTHENTICATING_CLIENT"
PREPARING = "PREPARING"
FETCHING = "FETCHING"
LOADING = "LOADING"
CANCELLING = "CANCELLING"
CANCEL_RELAY = "CANCEL_RELAY"
CANCEL_RELAY_KEY = "cancel_relay"   # Finish.result: the CancelSession request for the server (a delivery)
RECOVERING = "RECOVERING"
EVENT_RETRIEVAL = "EVENT_RETRIEVAL"

SMDS = "smds"   # ctx["phase"]: authenticating with the SM-DS for its events (ES11)
SMDP = "smdp"   # ctx["phase"]: the download itself (ES9+ or ESipa)


def parse_activation_code(code: str) -> tuple[str, str | None]:
    """(SM-DP+ address, matchingId) of an SGP.22 §4.1 activation code "1$ADDR$MATCHING[$...]"."""
    text = code.strip()
    if text.upper().startswith("LPA:"):
        text = text[4:]
    parts = text.split("$")
    if len(parts) < 2 or parts[0] != "1" or not parts[1]:
        raise DecodeError(f"not an activation code: {code!r}", type_name="ActivationCode")
    matching = parts[2] if len(parts) > 2 and parts[2] else None
    return parts[1], matching


def _check_sw(reply_sw: int, what: str) -> None:
    if reply_sw != 0x9000:
        from gateway.spec.apdu import sw_error
        raise sw_error(reply_sw)


def _replies(answer: object, count: int, what: str) -> list[bytes]:
    assert isinstance(answer, DeviceAnswer)
    if len(answer.replies) < count:
        raise RemoteProtocolError(f"{what}: the device answered {len(answer.replies)} of {count} calls"
                                  f" (stopped: {answer.stopped})")
    out = []
    for r in answer.replies[:count]:
        _check_sw(r.sw, what)
        out.append(r.data)
    return out


def _esipa_ok(body: bytes, outer: int, what: str) -> list[tlv.Tlv]:
    """Children of the Ok alternative ([0]) of an ESipa response; its error alternative raises."""
    node = tlv.read_single(body)
    if node.tag != outer:
        raise RemoteProtocolError(f"eIM answered {what} with tag {node.tag:X}")
    inner = tlv.children(body, node)
    if len(inner) != 1:
        raise DecodeError(f"{what}: {len(inner)} alternatives", type_name=what)
    if inner[0].tag != 0xA0:
        code = codec.decode(what, body)
        raise FunctionFailed(f"{what} refused by the eIM: {code[1]}", reason_code=str(code[1]))
    return tlv.children(body, inner[0])


class Download(Procedure):
    KIND = "download"
    REPEATABLE = frozenset({CHALLENGE})     # a new challenge replaces the old one (SGP.22 §3.1.2)
    LEGACY = frozenset({CANCEL_RELAY})      # reached no more; kept to finish sessions saved in it
    TABLE = {
        (INITIAL, START): row("_start", CHALLENGE),
        (CHALLENGE, DEVICE): row("_challenged", INITIATING),
        (INITIATING, ANSWER): row("_initiated", AUTHENTICATING),
        (AUTHENTICATING, DEVICE): row("_authenticated", AUTHENTICATING_CLIENT, EVENT_RETRIEVAL),
        (EVENT_RETRIEVAL, ANSWER): row("_events", CHALLENGE),
        (EVENT_RETRIEVAL, FAILURE): row("_cancel", CANCELLING),
        (AUTHENTICATING_CLIENT, ANSWER): row("_client_authenticated", PREPARING),
        (PREPARING, DEVICE): row("_prepared", FETCHING),
        (FETCHING, ANSWER): row("_fetched", LOADING),
        (LOADING, DEVICE): row("_loaded", DONE),
        (AUTHENTICATING, FAILURE): row("_cancel", CANCELLING),
        (AUTHENTICATING_CLIENT, FAILURE): row("_cancel", CANCELLING),
        (PREPARING, FAILURE): row("_cancel", CANCELLING),
        (FETCHING, FAILURE): row("_cancel", CANCELLING),
        (LOADING, FAILURE): row("_cancel", CANCELLING),
        (CANCELLING, DEVICE): row("_cancelled_on_euicc", ERROR, CANCELLING, RECOVERING),
        (RECOVERING, DEVICE): row("_recovered", DONE),
        # a session saved by an older gateway while it relayed the cancellation itself
        (CANCEL_RELAY, ANSWER): row("_cancel_relayed"),
        (CANCEL_RELAY, FAILED): row("_cancel_relayed"),
    }

    # -- context helpers ------------------------------------------------------------------

    @property
    def indirect(self) -> bool:
        return bool(self.ctx.get("indirect"))

    def _request(self, tag: str, es9_function: str, esipa_function: str, es9_body: bytes,
                 esipa_body: bytes) -> Request:
        if self.indirect:
            return Request(tag, "esipa", self.ctx["eim_id"], esipa_function, esipa_body)
        return Request(tag, "es9", self.ctx["smdp"], es9_function, es9_body)

    def next_downlink_hint(self, config: EngineConfig) -> int | None:
        # estimates: the sizes come with the server's answer, after the batch is sent
        if self.state == PREPARING:
            return config.bpp_size_hint              # the whole Bound Profile Package follows
        if self.state == CHALLENGE:
            return config.authenticate_server_size_hint   # AuthenticateServer follows
        return None

    # -- transitions -----------------------------------------------------------------------

    def _start(self, env: Env, _: object) -> tuple[str, list[Output]]:
        raw: bytes = self.ctx["request"]
        value = codec.decode("ProfileDownloadTriggerRequest", raw)
        self.ctx["tid"] = value.get("eimTransactionId")
        data = value.get("profileDownloadData")
        smdp: str | None = None
        matching: str | None = None
        self.ctx["phase"] = SMDP
        if data is None or data[0] == "contactDefaultSmdp":
            self.ctx["read_default"] = True     # the eUICC's default SM-DP+ wins over the gateway's
            smdp = env.config.default_smdp
        elif data[0] == "activationCode":
            smdp, matching = parse_activation_code(data[1])
        elif data[0] == "contactSmds":
            smds = data[1].get("smdsAddress") or env.config.default_smds
            if not smds:
                raise FunctionFailed("contactSmds without an SM-DS address and no default SM-DS")
            self.ctx["phase"], self.ctx["smds"] = SMDS, smds
        else:
            raise FunctionFailed(f"unknown profileDownloadData {data[0]}")
        self.ctx["smdp"] = smdp
        self.ctx["matching_id"] = matching
        calls: tuple[Call, ...] = (Call("GetEuiccChallenge", es10.get_euicc_challenge()),
                                   Call("GetEUICCInfo1", es10.get_euicc_info1()))
        if self.ctx.get("read_default"):
            calls += (Call("IpaEuiccData", es10.ipa_euicc_data_request(b"\x81")),)
        return CHALLENGE, [DeviceWork(calls)]

    def _challenged(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        challenge_raw, info1 = _replies(answer, 2, "GetEuiccChallenge/GetEUICCInfo1")
        challenge = es10.euicc_challenge(challenge_raw)
        if self.ctx.pop("read_default", False):
            assert isinstance(answer, DeviceAnswer)
            reply = answer.replies[2] if len(answer.replies) > 2 else None
            default = es10.default_smdp_address(reply.data) if reply is not None and reply.sw == 0x9000 else None
            self.ctx["smdp"] = default or self.ctx.get("smdp")
        if self.ctx["phase"] == SMDP and not self.ctx.get("smdp"):
            raise FunctionFailed("no SM-DP+ address: no activation code and no default SM-DP+")
        # decided now, not at start: the eIM configuration may have been read in this batch
        eim = next((e for e in env.eims if e.get("eimId") == self.ctx.get("eim_id")), None)
        self.ctx["indirect"] = bool(eim is not None and eim.get("indirectProfileDownload"))
        es10.outer(info1, es10.TAG_GET_EUICC_INFO1, "EUICCInfo1")
        if self.ctx["phase"] == SMDS:
            body = es11.InitiateAuthenticationRequest(challenge, info1, self.ctx["smds"]).to_json()
            return INITIATING, [Request("ia", "es11", self.ctx["smds"], es11.INITIATE_AUTHENTICATION, body)]
        smdp: str = self.ctx["smdp"]
        es9_body = es9p.InitiateAuthenticationRequest(challenge, info1, smdp).to_json()
        parts = [signed.wrap(0x81, challenge), signed.wrap(0x83, smdp.encode()), info1]
        if self.ctx.get("tid") is not None:
            parts.append(signed.wrap(0x82, self.ctx["tid"]))
        esipa_body = signed.wrap(0xBF39, *parts)
        return INITIATING, [self._request("ia", es9p.INITIATE_AUTHENTICATION, "InitiateAuthentication",
                                          es9_body, esipa_body)]

    def _initiated(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        assert isinstance(answer, Answer)
        matching: str | None = self.ctx.get("matching_id")
        if self.ctx["phase"] == SMDS:
            r11 = es11.InitiateAuthenticationResponse.from_json(answer.body)
            ss1 = es10.ensure_tlv(r11.server_signed1, 0x30)
            sig1 = es10.ensure_tlv(r11.server_signature1, 0x5F37)
            pkid = es10.ensure_tlv(r11.euicc_ci_pkid_to_be_used, 0x04)
            cert = r11.server_certificate
            tid = r11.transaction_id
        elif self.indirect:
            body = answer.body
            items = _esipa_ok(body, 0xBF39, "InitiateAuthenticationResponseEsipa")
            by_tag: dict[int, list[bytes]] = {}
            for t in items:
                by_tag.setdefault(t.tag, []).append(t.raw_of(body))
            ss1, cert = by_tag[0x30][0], by_tag[0x30][1]
            sig1, pkid = by_tag[0x5F37][0], by_tag[0x04][0]
            tid = bytes(codec.decode("ServerSigned1", ss1)["transactionId"])
            if 0x0C in by_tag and matching is None:
                matching = tlv.read_single(by_tag[0x0C][0]).value_of(by_tag[0x0C][0]).decode()
        else:
            r = es9p.InitiateAuthenticationResponse.from_json(answer.body)
            ss1 = es10.ensure_tlv(r.server_signed1, 0x30)
            sig1 = es10.ensure_tlv(r.server_signature1, 0x5F37)
            pkid = es10.ensure_tlv(r.euicc_ci_pkid_to_be_used, 0x04)
            cert = r.server_certificate
            tid = r.transaction_id
        self.ctx["transaction_id"] = tid
        device_info: dict[str, Any] = {"tac": env.config.device_tac, "deviceCapabilities": {}}
        if env.imei and len(env.imei) >= 15 and env.imei.isdigit():
            device_info["imei"] = _bcd(env.imei[:15] + "F")
        request = es10.authenticate_server(ss1, sig1, pkid, cert, es10.ctx_params1(matching, device_info))
        return AUTHENTICATING, [DeviceWork((Call("AuthenticateServer", request),))]

    def _authenticated(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        (raw,) = _replies(answer, 1, "AuthenticateServer")
        r = es10.authenticate_server_response(raw)
        if not r.ok:
            raise RemoteProtocolError(f"AuthenticateServer refused by the eUICC: error {r.error}")
        tid: bytes = self.ctx["transaction_id"]
        if self.ctx["phase"] == SMDS:
            body = es11.AuthenticateClientRequest(tid, raw).to_json()
            return EVENT_RETRIEVAL, [Request("events", "es11", self.ctx["smds"], es11.AUTHENTICATE_CLIENT, body)]
        es9_body = es9p.AuthenticateClientRequest(tid, raw).to_json()
        esipa_body = signed.authenticate_client_request(tid, raw)
        return AUTHENTICATING_CLIENT, [self._request("ac", es9p.AUTHENTICATE_CLIENT, "AuthenticateClient",
                                                     es9_body, esipa_body)]

    def _events(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        """The SM-DS's events (SGP.22 §3.6.3): download the first from its SM-DP+, the
        eventId as matchingId; a new RSP session starts with a new challenge."""
        assert isinstance(answer, Answer)
        events = es11.AuthenticateClientResponse.from_json(answer.body).event_entries
        if not events:
            raise FunctionFailed(f"the SM-DS {self.ctx['smds']} holds no event for this eUICC")
        event = events[0]
        self.ctx.update(phase=SMDP, smdp=event.rsp_server_address, matching_id=event.event_id)
        self.ctx.pop("transaction_id", None)
        calls = (Call("GetEuiccChallenge", es10.get_euicc_challenge()),
                 Call("GetEUICCInfo1", es10.get_euicc_info1()))
        return CHALLENGE, [Note("eventRetrieval", "ok", f"{event.event_id} at {event.rsp_server_address}"),
                           DeviceWork(calls)]

    def _client_authenticated(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        assert isinstance(answer, Answer)
        hash_cc: bytes | None = None
        if self.indirect:
            body = answer.body
            items = _esipa_ok(body, 0xBF3B, "AuthenticateClientResponseEsipa")
            seqs = [t.raw_of(body) for t in items if t.tag == 0x30]
            smdp_signed2, cert = seqs[0], seqs[1]
            sig2 = next(t.raw_of(body) for t in items if t.tag == 0x5F37)
            hash_cc = next((t.raw_of(body) for t in items if t.tag == 0x04), None)
        else:
            r = es9p.AuthenticateClientResponse.from_json(answer.body)
            smdp_signed2 = es10.ensure_tlv(r.smdp_signed2, 0x30)
            sig2 = es10.ensure_tlv(r.smdp_signature2, 0x5F37)
            cert = r.smdp_certificate
        if codec.decode("SmdpSigned2", smdp_signed2).get("ccRequiredFlag") and hash_cc is None:
            raise FunctionFailed("the profile needs a confirmation code; this IPA has no end user to ask")
        request = es10.prepare_download(smdp_signed2, sig2, cert, hash_cc)
        return PREPARING, [DeviceWork((Call("PrepareDownload", request),))]

    def _prepared(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        (raw,) = _replies(answer, 1, "PrepareDownload")
        r = es10.prepare_download_response(raw)
        if not r.ok:
            raise RemoteProtocolError(f"PrepareDownload refused by the eUICC: error {r.error}")
        tid: bytes = self.ctx["transaction_id"]
        es9_body = es9p.GetBoundProfilePackageRequest(tid, raw).to_json()
        esipa_body = signed.get_bound_profile_package_request(tid, raw)
        return FETCHING, [self._request("bpp", es9p.GET_BOUND_PROFILE_PACKAGE, "GetBoundProfilePackage",
                                        es9_body, esipa_body)]

    def _fetched(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        assert isinstance(answer, Answer)
        if self.indirect:
            body = answer.body
            items = _esipa_ok(body, 0xBF3A, "GetBoundProfilePackageResponseEsipa")
            package = next(t.raw_of(body) for t in items if t.tag == 0xBF36)
        else:
            package = es9p.GetBoundProfilePackageResponse.from_json(answer.body).bound_profile_package
        segments = bpp.segments(package)
        calls = tuple(Call("LoadBoundProfilePackage", s, segment=i < len(segments) - 1)
                      for i, s in enumerate(segments))
        self.ctx["segments"] = len(segments)
        return LOADING, [DeviceWork(calls)]

    def _loaded(self, env: Env, answer: object, recovered: bool = False) -> tuple[str, list[Output]]:
        assert isinstance(answer, DeviceAnswer)
        count: int = 1 if recovered else self.ctx["segments"]
        pir: bytes | None = None
        for i, reply in enumerate(answer.replies[:count]):
            pir = bpp.segment_response(i, count, reply.data, reply.sw)
            if pir is not None:
                break
        if pir is None:
            raise RemoteProtocolError(f"the BPP load ended without ProfileInstallationResult "
                                      f"after {len(answer.replies)} of {count} segments ({answer.stopped})")
        result = es10.profile_installation_result(pir)
        outcome = "ok" if result.success else "failed"
        detail = "installed" if result.success else f"installation failed: errorReason {result.error_reason}"
        return DONE, [
            Note("download", outcome, detail, result.iccid),
            Finish(outcome, detail, {"pir": pir, "seq": result.seq_number,
                                     "address": result.notification_address}),
        ]

    # -- failure and cancellation (SGP.22 §3.0.2, §5.7.14) -----------------------------------

    def _cancel(self, env: Env, why: object) -> tuple[str, list[Output]]:
        """A failure once the eUICC holds a session: CancelSession (SGP.22 §5.7.14)."""
        tid = self.ctx.get("transaction_id")
        if tid is None:
            return ERROR, [Note("download", "failed", str(why)), Finish("failed", str(why))]
        reason = _cancel_reason(self.state, self.ctx.get("failure_class"))
        self.ctx["cancel_reason"] = reason
        return CANCELLING, [Note("download", "cancelling", str(why)),
                            DeviceWork((Call("CancelSession", es10.cancel_session(tid, reason)),))]

    def on_error(self, env: Env, previous: str, why: str) -> list[Output]:
        return [Note("download", "failed", why), Finish("failed", why)]

    def _cancelled_on_euicc(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        assert isinstance(answer, DeviceAnswer)
        reply = answer.replies[0] if answer.replies else None
        tid: bytes = self.ctx["transaction_id"]
        if reply is None or reply.sw != 0x9000 or not reply.data:
            if not self.ctx.get("cancel_resent"):
                # a glitch (the command was not run): the eUICC must not stay mid-session
                self.ctx["cancel_resent"] = True
                reason = self.ctx.get("cancel_reason", "undefinedReason")
                return CANCELLING, [DeviceWork((Call("CancelSession", es10.cancel_session(tid, reason)),))]
            return ERROR, [Note("cancelSession", "failed", "the eUICC did not answer CancelSession"),
                           Finish("failed", self.ctx.get("error", ""))]
        raw = reply.data
        if self.ctx.get("phase") == SMDS:
            # ES11 has no cancelSession: the eUICC's session is closed, nothing to relay
            return ERROR, [Note("cancelSession", "ok", "SM-DS session cancelled on the eUICC"),
                           Finish("failed", self.ctx.get("error", ""))]
        if not es10.cancel_session_response(raw).ok:
            # no session for this transaction: it ended on the eUICC (a lost installation
            # result, a power loss); the installation result, if any, is in its notifications
            return RECOVERING, [DeviceWork((Call("RetrieveNotificationsList",
                                                 es10.retrieve_notifications_list()),))]
        es9_body = es9p.CancelSessionRequest(tid, raw).to_json()
        esipa_body = signed.cancel_session_request(tid, raw)
        # the eUICC is free: the download ends now, and its signed cancellation waits in the
        # outbox for the server like a notification (retried until acknowledged, across outages)
        relay = self._request("cancel", es9p.CANCEL_SESSION, "CancelSession", es9_body, esipa_body)
        return ERROR, [Note("cancelSession", "ok", f"cancelled on the eUICC; queued for {relay.server}"),
                       Finish("cancelled", self.ctx.get("error", ""), {CANCEL_RELAY_KEY: relay, "transaction_id": tid})]

    def _recovered(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        (raw,) = _replies(answer, 1, "RetrieveNotificationsList")
        for note in es10.retrieved_list(raw).notifications:
            if note.event == "install":
                pir = es10.profile_installation_result(note.raw)
                if pir.transaction_id == self.ctx["transaction_id"]:
                    return self._loaded(env, DeviceAnswer((Reply(note.raw, 0x9000),)), recovered=True)
        raise RemoteProtocolError(f"no session and no installation result on the eUICC "
                                  f"({self.ctx.get('error', '')})")

    def _cancel_relayed(self, env: Env, payload: object) -> tuple[str, list[Output]]:
        told = "server told" if isinstance(payload, Answer) else "server not reachable"
        if isinstance(payload, Failure):
            told += f": {payload.detail}"
        why = self.ctx.get("error", "")
        return ERROR, [Note("cancelSession", "ok", told), Finish("cancelled", why)]


_TIMEOUTS = frozenset({"TransportTimeout", "NetworkError", "CircuitOpen", "TransportError"})


def _cancel_reason(state: str, failure_class: str | None) -> str:
    """CancelSessionReason (SGP.22 §5.7.14) for a failure in `state`."""
    if failure_class == "OperatorCancel":
        return "endUserRejection"     # the operator stands for the end user of a headless device
    if failure_class in _TIMEOUTS:
        return "timeout"              # the server stayed unreachable through every retry
    if state == LOADING:
        return "loadBppExecutionError"
    return "undefinedReason"


def _bcd(digits: str) -> bytes:
    """Swapped-nibble BCD (3GPP TS 24.008): "35290611" -> 53 92 60 11."""
    if len(digits) % 2:
        digits += "F"
    return bytes(int(digits[i + 1], 16) << 4 | int(digits[i], 16) for i in range(0, len(digits), 2))


def trigger_result(eim_transaction_id: bytes | None, finish: Finish) -> bytes:
    """The ProfileDownloadTriggerResult (BF54) for the eIM: the PIR as received, or an error."""
    tid = signed.wrap(0x82, eim_transaction_id) if eim_transaction_id is not None else b""
    pir = finish.result.get("pir")
    if isinstance(pir, bytes):
        return signed.wrap(0xBF54, tid, pir)
    value: dict[str, Any] = {"profileDownloadTriggerResultData": (
        "profileDownloadError", {"profileDownloadErrorReason": 127})}
    if eim_transaction_id is not None:
        value["eimTransactionId"] = eim_transaction_id
    return codec.encode("ProfileDownloadTriggerResult", value)
