"""An in-memory SM-DS, the one responder kept where no real peer (hil/peers) fits.

`MiniSmds`: ES11 event retrieval. hil/peers has no SM-DS, so the engine's contactSmds tests
(tests/core/test_e2e_download.py) reach this one through the driver, and download the profile
from the real SM-DP+ peer the event names. The test PKI has no CERT.DSauth: it authenticates
with the SM-DP+'s DPauth credential (the eUICC checks that role). Its crypto is real
(serverSigned1 signed with the test PKI's DPauth key); it does not verify the eUICC's signature.
Everything else -- SM-DP+ and eIM -- is the real peers of hil/peers (tests/core/driver.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from gateway.spec import codec, es9p, es11, signed
from hil import rspcrypto
from hil.euicc import signed_data
from hil.pki import RspPki


@dataclass
class MiniSmds:
    """An SM-DS stand-in for ES11 event retrieval (see the module docstring)."""

    pki: RspPki
    address: str = "smds.example"
    events: list[tuple[str, str]] = field(default_factory=list)   # (eventId, rspServerAddress)
    calls: list[str] = field(default_factory=list)

    def handle(self, function: str, body: bytes) -> bytes:
        self.calls.append(function)
        if function == es11.INITIATE_AUTHENTICATION:
            return self._initiate_authentication(es11.InitiateAuthenticationRequest.from_json(body))
        if function == es11.AUTHENTICATE_CLIENT:
            auth = es9p.AuthenticateClientRequest.from_json(body)
            kind, _ = codec.decode("AuthenticateServerResponse", auth.authenticate_server_response)
            assert kind == "authenticateResponseOk"
            return es11.AuthenticateClientResponse(
                tuple(es11.EventEntry(e, a) for e, a in self.events), auth.transaction_id).to_json()
        raise AssertionError(f"unexpected ES11 function {function}")

    def _initiate_authentication(self, init: es11.InitiateAuthenticationRequest) -> bytes:
        # SGP.22 §5.8.1 (ES11.InitiateAuthentication): answered as ES9+'s, signed with DPauth
        tid = os.urandom(16)
        ss1 = codec.encode("ServerSigned1", {"transactionId": tid, "euiccChallenge": init.euicc_challenge,
                                             "serverAddress": self.address, "serverChallenge": os.urandom(16)})
        sig = rspcrypto.sign_rs(self.pki.dpauth.key, signed_data.server_signature1_input(ss1))
        return es9p.InitiateAuthenticationResponse(tid, ss1, signed.wrap(0x5F37, sig), signed.wrap(0x04, self.pki.ci_pkid),
                                                   self.pki.dpauth.cert_der).to_json()
