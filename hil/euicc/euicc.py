"""`SoftEuicc`: a software eUICC (ISD-R) that answers APDUs with real RSP cryptography.

Theory of operation. Three layers, as in a card:

- `card.ApduLayer` speaks ISO 7816 (channels, SELECT, STORE DATA, GET RESPONSE) and hands
  each complete ES10 request (one DER object) to `SoftEuicc._es10`;
- `_es10` finds the function by the request's outer tag (`dispatch.FUNCTIONS`, filled by
  the modules rsp, notifications, profiles, eim), decodes the request with the project
  codec and calls the handler; segments of a Bound Profile Package (BF36 header, A0-A3
  headers, 86/87/88) go to the `bpp_load.BppLoader` while a load is in progress;
- handlers change `self.state` (the non-volatile memory) and call `commit()`, which
  snapshots it (and writes the state file atomically when there is one). Volatile things
  (the RSP session, a BPP being loaded, channels) live in the object only.

A power loss (`faults.PowerLoss`, injected by `Faults.tear_after_bpp_segments`) leaves the
last committed state; `power_cycle()` brings the card back from it, as a real card boots
from its NVM, and cleans up a Profile whose installation was torn.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import DecodeError, LocalProtocolError
from gateway.spec import codec, tlv
from hil.euicc import bpp_load
from hil.euicc import state as nvm
from hil.euicc.card import (
    SW_NO_PRECISE_DIAGNOSIS,
    SW_REFERENCED_DATA_NOT_FOUND,
    SW_WRONG_DATA,
    ApduLayer,
    StatusWord,
)
from hil.euicc.dispatch import FUNCTIONS
from hil.euicc.faults import Faults, PowerLoss
from hil.euicc.identity import EuiccIdentity, identity_from_pki, load_pki
from hil.pki import RspPki

log = logging.getLogger(__name__)

BPP_SEGMENT_TAGS = frozenset({0xA0, 0xA1, 0xA2, 0xA3, 0x86, 0x87, 0x88})


@dataclass
class RspSession:
    """Volatile state of one profile download (SGP.22 §3.1.3), from GetEuiccChallenge on."""

    euicc_challenge: bytes
    phase: str = "challenge"          # challenge -> authenticated -> prepared -> loading
    transaction_id: bytes = b""
    server_address: str = ""
    server_challenge: bytes = b""
    smdp_oid: str | None = None       # from CERT.DPauth, once AuthenticateServer accepted it
    ci_pkid: bytes = b""
    dpauth_der: bytes = b""
    euicc_signature1: bytes = b""
    smdp_signature2: bytes = b""
    dppb_der: bytes = b""
    euicc_signature2: bytes = b""
    ot_private: Any = None
    ot_public: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)


class SoftEuicc:
    """A software eUICC; see the package docstring for the public interface."""

    def __init__(self, pki: RspPki | Path | str, eid: bytes | str, state_path: Path | None = None,
                 faults: Faults | None = None, *, channels_supported: int = 20,
                 max_command_size: int = 65536) -> None:
        eid_bytes = bytes.fromhex(eid) if isinstance(eid, str) else bytes(eid)
        if len(eid_bytes) != 16:
            raise ValueError(f"an EID is 16 bytes, got {len(eid_bytes)}")
        self.pki = load_pki(pki)
        self.identity: EuiccIdentity = identity_from_pki(self.pki, eid_bytes)
        self.state_path = Path(state_path) if state_path is not None else None
        self.faults = faults if faults is not None else Faults()
        self.apdu = ApduLayer(self._es10, self.faults, channels_supported=channels_supported,
                              max_command_size=max_command_size)
        initial = nvm.load(self.state_path) if self.state_path is not None else nvm.EuiccState()
        self._nvm = nvm.dump(initial)
        self.state = initial
        self.session: RspSession | None = None
        self.bpp: Any = None                      # bpp_load.BppLoader while a BPP is loading
        self.just_installed: bytes | None = None  # ICCID, for ImmediateEnable (SGP.32 §5.9.x)
        self.refresh_requests = 0                 # REFRESH proactive commands a real card would send
        self.powered = True
        self._lock = threading.Lock()
        self._boot()

    # -- public helpers ---------------------------------------------------------------------

    @property
    def eid(self) -> bytes:
        return self.identity.eid

    def transmit(self, apdu: bytes) -> bytes:
        """One command APDU in, response data + SW out (raises PowerLoss after a tear)."""
        with self._lock:
            if not self.powered:
                raise PowerLoss("the card is off: call power_cycle()")
            try:
                return self.apdu.transmit(apdu)
            except PowerLoss:
                self.powered = False
                raise

    def power_cycle(self) -> None:
        """Power off and on: volatile state is lost, the NVM snapshot is what remains."""
        with self._lock:
            self._power_on()

    def _power_on(self) -> None:
        self.state = nvm.load_bytes(self._nvm)
        self.session = None
        self.bpp = None
        self.just_installed = None
        self.apdu.reset()
        self.powered = True
        self._boot()

    @property
    def profiles(self) -> list[nvm.Profile]:
        return list(self.state.profiles)

    @property
    def notifications(self) -> list[nvm.Notification]:
        return list(self.state.notifications)

    @property
    def session_open(self) -> bool:
        return self.session is not None

    def commit(self) -> None:
        """Make the current state non-volatile (atomically, in the state file if any)."""
        self._nvm = nvm.dump(self.state)
        if self.state_path is not None:
            nvm.save(self.state, self.state_path)

    def sign(self, data: bytes) -> bytes:
        return self.identity.sign(data)

    def new_isdp_aid(self) -> bytes:
        number = self.state.next_isdp
        self.state.next_isdp += 1
        return bytes.fromhex("A0000005591010FFFFFFFF8900") + (0x1000 + number).to_bytes(3, "big")

    @staticmethod
    def random(n: int) -> bytes:
        return os.urandom(n)

    # -- internals --------------------------------------------------------------------------

    def _boot(self) -> None:
        if bpp_load.clean_up_torn_installations(self):
            self.commit()

    def _es10(self, request: bytes) -> bytes:
        """One complete ES10 request in, its response out; a card never crashes, so neither does this."""
        try:
            return self._dispatch(request)
        except (StatusWord, PowerLoss):
            raise
        except Exception as exc:   # a bug of this card: answer like one, and say so in the log
            log.exception("ES10 request %s failed", request[:4].hex())
            raise StatusWord(SW_NO_PRECISE_DIAGNOSIS, f"internal error: {exc}") from exc

    def _dispatch(self, request: bytes) -> bytes:
        try:
            head_tag = bpp_load.header(request)[0]
        except DecodeError as exc:
            raise StatusWord(SW_WRONG_DATA, str(exc)) from exc
        if head_tag == 0xBF36 or (head_tag in BPP_SEGMENT_TAGS and self.bpp is not None):
            return bpp_load.load_segment(self, request)
        function = FUNCTIONS.get(head_tag)
        if function is None and self.bpp is not None:   # garbage inside a BPP: ends the load
            return bpp_load.load_segment(self, request)
        if function is None:
            raise StatusWord(SW_REFERENCED_DATA_NOT_FOUND, f"unknown ES10 tag {head_tag:X}")
        try:
            tlv.read_single(request)
            value = codec.decode(function.request_type, request)
        except DecodeError as exc:
            raise StatusWord(SW_WRONG_DATA, f"{function.name}: {exc}") from exc
        try:
            return function.handler(self, request, value)
        except DecodeError as exc:
            raise StatusWord(SW_WRONG_DATA, f"{function.name}: {exc}") from exc
        except LocalProtocolError as exc:   # a response this card cannot encode: its own bug
            raise StatusWord(SW_NO_PRECISE_DIAGNOSIS, f"{function.name}: {exc}") from exc
