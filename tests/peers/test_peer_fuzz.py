"""Malformed bodies never crash the peers: hypothesis over every HTTP endpoint of both.

Both peers run once for the module on real TLS sockets, in a thread with its own event loop;
each example is one real HTTPS request (http.client). Whatever arrives, the answer is an HTTP
status the binding defines (200 with an error inside, 204, 400, 404, 413, 415), never a 500,
and a valid request still succeeds afterwards. A last test sends well-formed ESipa results
and notifications with wrong contents (forged signatures, unknown counters and transactions,
foreign eIM ids, bad certificates), which get past the decoder into the eIM's logic.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.spec import codec, es9p, signed
from hil.peers.common import client_ssl_context
from hil.peers.eim import EimServer
from hil.peers.smdpp import SmdppServer
from hil.pki import RspPki

ALLOWED = {200, 204, 400, 404, 413, 415}
ES9P = ["initiateAuthentication", "authenticateClient", "getBoundProfilePackage", "handleNotification",
        "cancelSession"]
ESIPA_JSON = ["initiateAuthentication", "authenticateClient", "getBoundProfilePackage", "cancelSession",
              "handleNotification", "getEimPackage", "provideEimPackageResult", "transferEimPackage", "nope"]
FIELDS = ["euiccChallenge", "euiccInfo1", "smdpAddress", "transactionId", "authenticateServerResponse",
          "prepareDownloadResponse", "pendingNotification", "cancelSessionResponse", "eidValue",
          "eimPackageResult", "euiccPackageResult", "eimTransactionId"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Peers:
    """The SM-DP+ and the eIM served from a background event loop."""

    def __init__(self, pki: RspPki) -> None:
        self.pki = pki
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.smdpp: SmdppServer | None = None
        self.eim: EimServer | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.smdpp = SmdppServer(self.pki)
        await self.smdpp.start()
        self.eim = EimServer(self.pki, smdp_url=self.smdpp.url)
        await self.eim.start()

    async def _stop(self) -> None:
        assert self.smdpp is not None and self.eim is not None
        await self.eim.stop()
        await self.smdpp.stop()

    def __enter__(self) -> Peers:
        self.thread.start()
        assert self.ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture(scope="module")
def peers(pki: RspPki) -> Iterator[Peers]:
    with Peers(pki) as running:
        yield running


@pytest.fixture(scope="module")
def tls(pki: RspPki) -> ssl.SSLContext:
    return client_ssl_context(pki)


def post(tls: ssl.SSLContext, url: str, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    host, port = url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=tls, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=40),
                      st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode()))
json_values = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5)),
    max_leaves=12)


def field_objects() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)


def tlv_like() -> st.SearchStrategy[bytes]:
    """Bytes that start like the DER the peers expect, then go wrong."""
    seeds = [codec.encode("EsipaMessageFromIpaToEim", ("getEimPackageRequest", {"eidValue": bytes(16)})),
             signed.provide_eim_package_result(bytes(16), codec.encode("EuiccPackageResult", (
                 "euiccPackageErrorUnsigned", {"eimId": "x"}))),
             signed.handle_notification(codec.encode("ProfileInstallationResult", {
                 "profileInstallationResultData": {"transactionId": b"1", "notificationMetadata": {
                     "seqNumber": 1, "profileManagementOperation": (b"\x80", 1), "notificationAddress": "a"},
                     "smdpOid": "1.2", "finalResult": ("errorResult", {"bppCommandId": 1, "errorReason": 1})},
                 "euiccSignPIR": bytes(64)}))]
    return st.tuples(st.sampled_from(seeds), st.integers(0, 400), st.binary(max_size=8), st.booleans()).map(
        lambda t: (t[0][:t[1]] + t[2] + t[0][t[1] + len(t[2]):]) if t[3] else t[0][:t[1]])


def es9p_seeds() -> list[bytes]:
    tid = bytes(16)
    return [
        codec.encode("EUICCInfo1", {"svn": bytes([2, 5, 0]), "euiccCiPKIdListForVerification": [bytes(20)],
                                    "euiccCiPKIdListForSigning": [bytes(20)]}),
        codec.encode("AuthenticateServerResponse", ("authenticateResponseError", {
            "transactionId": tid, "authenticateErrorCode": 4})),
        codec.encode("PrepareDownloadResponse", ("downloadResponseError", {
            "transactionId": tid, "downloadErrorCode": 4})),
        codec.encode("CancelSessionResponse", ("cancelSessionResponseError", 5)),
    ]


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.tuples(st.sampled_from(seeds), st.integers(0, 120), st.binary(max_size=6)).map(
        lambda t: t[0][:t[1]] + t[2] + t[0][t[1] + len(t[2]):])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


well_formed_es9p = st.fixed_dictionaries({
    "transactionId": st.sampled_from(["00" * 16, "AB", "0G", ""]),
    "euiccChallenge": st.binary(min_size=15, max_size=17).map(b64),
    "smdpAddress": st.text(max_size=20),
    "euiccInfo1": mutated(es9p_seeds()).map(b64),
    "authenticateServerResponse": mutated(es9p_seeds()).map(b64),
    "prepareDownloadResponse": mutated(es9p_seeds()).map(b64),
    "pendingNotification": mutated(es9p_seeds()).map(b64),
    "cancelSessionResponse": mutated(es9p_seeds()).map(b64)}).map(lambda o: json.dumps(o).encode())


@SETTINGS
@given(function=st.sampled_from(ES9P), body=st.one_of(
    st.binary(max_size=200), field_objects().map(lambda o: json.dumps(o).encode()),
    json_values.map(lambda o: json.dumps(o).encode()), well_formed_es9p))
def test_es9p_endpoints_answer_every_malformed_body_without_crashing(
        peers: Peers, tls: ssl.SSLContext, function: str, body: bytes) -> None:
    assert peers.smdpp is not None
    status, reply = post(tls, peers.smdpp.url, es9p.es9p_path(function), body, "application/json")
    assert status in ALLOWED, (status, reply)
    if status == 200:
        obj = json.loads(reply)
        assert obj["header"]["functionExecutionStatus"]["status"] == "Failed"


@SETTINGS
@given(body=st.one_of(st.binary(max_size=300), tlv_like()))
def test_esipa_asn1_endpoint_answers_every_malformed_body_without_crashing(
        peers: Peers, tls: ssl.SSLContext, body: bytes) -> None:
    assert peers.eim is not None
    status, _ = post(tls, peers.eim.url, "/gsma/rsp2/asn1", body, "application/x-gsma-rsp-asn1")
    assert status in ALLOWED


@SETTINGS
@given(function=st.sampled_from(ESIPA_JSON), body=st.one_of(
    st.binary(max_size=200), field_objects().map(lambda o: json.dumps(o).encode()),
    json_values.map(lambda o: json.dumps(o).encode())))
def test_esipa_json_endpoints_answer_every_malformed_body_without_crashing(
        peers: Peers, tls: ssl.SSLContext, function: str, body: bytes) -> None:
    assert peers.eim is not None
    status, _ = post(tls, peers.eim.url, "/gsma/rsp2/esipa/" + function, body, "application/json")
    assert status in ALLOWED


@SETTINGS
@given(path=st.sampled_from(["/admin/orders", "/admin/eids/89049032000000000000000000000001/psmo",
                             "/admin/eids/89049032000000000000000000000001/eco",
                             "/admin/eids/89049032000000000000000000000001/download",
                             "/admin/eids/89049032000000000000000000000001/ipa-euicc-data",
                             "/admin/eids/89049032000000000000000000000001"]),
       body=st.one_of(st.binary(max_size=100), json_values.map(lambda o: json.dumps(o).encode()),
                      st.fixed_dictionaries({"operations": st.lists(st.dictionaries(
                          st.sampled_from(["op", "iccid", "eimId", "self", "rollback", "tagList"]),
                          json_values, max_size=4), max_size=3)}).map(lambda o: json.dumps(o).encode())))
def test_admin_endpoints_refuse_bad_requests_without_crashing(
        peers: Peers, tls: ssl.SSLContext, path: str, body: bytes) -> None:
    assert peers.smdpp is not None and peers.eim is not None
    url = peers.smdpp.url if path == "/admin/orders" else peers.eim.url
    status, reply = post(tls, url, path, body, "application/json")
    assert status in {200, 400, 404, 409}, (status, reply)


def test_peers_still_serve_valid_requests_after_the_fuzzing(peers: Peers, tls: ssl.SSLContext) -> None:
    assert peers.eim is not None
    status, reply = post(tls, peers.eim.url, "/gsma/rsp2/asn1", codec.encode(
        "EsipaMessageFromIpaToEim", ("getEimPackageRequest", {"eidValue": bytes(16)})), "application/x-gsma-rsp-asn1")
    assert status == 200
    assert codec.decode("EsipaMessageFromEimToIpa", reply) == ("getEimPackageResponse", ("eimPackageError", 2))


# --- well-formed ESipa messages with wrong contents: the eIM's logic, not its decoder ---------

small_bytes = st.binary(max_size=70)
transaction_ids = st.binary(min_size=1, max_size=16)
metadata = st.fixed_dictionaries({"seqNumber": st.integers(0, 9), "profileManagementOperation": st.just((b"\x80", 1)),
                                  "notificationAddress": st.text(max_size=10)})
pir_values = st.fixed_dictionaries({
    "profileInstallationResultData": st.fixed_dictionaries({
        "transactionId": transaction_ids, "notificationMetadata": metadata, "smdpOid": st.just("1.2.3"),
        "finalResult": st.one_of(
            st.just(("successResult", {"aid": bytes(16), "simaResponse": b"\x30\x00"})),
            st.just(("errorResult", {"bppCommandId": 1, "errorReason": 8})))}),
    "euiccSignPIR": small_bytes})
epr_values = st.one_of(
    st.fixed_dictionaries({
        "euiccPackageResultDataSigned": st.fixed_dictionaries({
            "eimId": st.sampled_from(["ipae-test-eim", "someone-else"]), "counterValue": st.integers(0, 5),
            "eimTransactionId": transaction_ids, "seqNumber": st.integers(0, 9),
            "euiccResult": st.lists(st.sampled_from([("getRATResult", []), ("enableResult", 1),
                                                     ("processingTerminated", 2)]), max_size=3)}),
        "euiccSignEPR": small_bytes}).map(lambda v: ("euiccPackageResultSigned", v)),
    st.fixed_dictionaries({
        "euiccPackageErrorDataSigned": st.fixed_dictionaries({
            "eimId": st.just("ipae-test-eim"), "counterValue": st.integers(0, 5),
            "euiccPackageErrorCode": st.sampled_from([3, 4, 6, 127])}),
        "euiccSignEPE": small_bytes}).map(lambda v: ("euiccPackageErrorSigned", v)),
    st.fixed_dictionaries({"eimId": st.just("ipae-test-eim"), "eimTransactionId": transaction_ids}).map(
        lambda v: ("euiccPackageErrorUnsigned", v)))


def provide(eid: bytes, result: tuple[str, Any]) -> bytes:
    return codec.encode("EsipaMessageFromIpaToEim", ("provideEimPackageResult", {"eidValue": eid,
                                                                                  "eimPackageResult": result}))


@st.composite
def eim_results(draw: st.DrawFn, eid: bytes, certificate: bytes) -> bytes:
    kind = draw(st.sampled_from(["epr", "epr+notes", "data", "trigger", "error", "notification"]))
    if kind == "notification":
        note = draw(st.one_of(pir_values.map(lambda v: ("profileInstallationResult", v)),
                              small_bytes.map(lambda b: ("compactOtherSignedNotification", {
                                  "tbsOtherNotification": {"seqNumber": 1, "profileManagementOperation": (b"\x40", 2),
                                                           "notificationAddress": "x"},
                                  "euiccNotificationSignature": b}))))
        return codec.encode("EsipaMessageFromIpaToEim", ("handleNotificationEsipa", ("pendingNotification", note)))
    if kind == "epr":
        return provide(eid, ("euiccPackageResult", draw(epr_values)))
    if kind == "epr+notes":
        notes = draw(st.lists(pir_values.map(lambda v: ("profileInstallationResult", v)), max_size=2))
        return provide(eid, ("ePRAndNotifications", {"euiccPackageResult": draw(epr_values),
                                                     "notificationList": notes}))
    if kind == "data":
        data: dict[str, Any] = {"eimTransactionId": draw(transaction_ids)}
        if draw(st.booleans()):
            data["euiccCertificate"] = draw(st.sampled_from([certificate, certificate[:-1] + b"\x00"]))
        data["euiccPackageResultList"] = draw(st.lists(epr_values, max_size=2))
        return provide(eid, ("ipaEuiccDataResponse", ("ipaEuiccData", data)))
    if kind == "trigger":
        return provide(eid, ("profileDownloadTriggerResult", {
            "eimTransactionId": draw(transaction_ids),
            "profileDownloadTriggerResultData": ("profileInstallationResult", draw(pir_values))}))
    return provide(eid, ("eimPackageResultResponseError", {"eimTransactionId": draw(transaction_ids),
                                                           "eimPackageResultErrorCode": 2}))


@SETTINGS
@given(data=st.data())
def test_well_formed_results_with_wrong_contents_are_answered_without_crashing(
        peers: Peers, tls: ssl.SSLContext, pki: RspPki, data: st.DataObject) -> None:
    assert peers.eim is not None
    eid = data.draw(st.sampled_from([pki.eid_bytes, bytes(16)]))
    peers.eim.service.device(pki.eid_bytes)
    body = data.draw(eim_results(eid, pki.euicc.cert_der))
    status, reply = post(tls, peers.eim.url, "/gsma/rsp2/asn1", body, "application/x-gsma-rsp-asn1")
    event(f"HTTP {status}")
    assert status in (200, 204, 400), (status, reply)
    if status == 200:
        alternative, (kind, _) = codec.decode("EsipaMessageFromEimToIpa", reply)
        assert alternative == "provideEimPackageResultResponse"
        assert kind in ("provideEimPackageResultError", "eimAcknowledgements", "emptyResponse")
