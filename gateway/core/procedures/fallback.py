"""Fallback (SGP.32 §3.11): the IPA switches to the fallback Profile when the network fails.

Theory of operation. A device that reports `attach_failures` at or above the configured
threshold cannot use its enabled Profile; the IPA asks the eUICC to execute the fallback
mechanism (ES10b ExecuteFallbackMechanism, SGP.32 §5.9.x) and the device to refresh, so the
modem attaches with the Profile marked as fallback. The session then tells the eIM with the
next GetEimPackage (notifyStateChange, stateChangeCause fallback): the eIM did not order it.

    INITIAL --start--> EXECUTING     [ExecuteFallbackMechanism(refreshFlag)] + refresh
    EXECUTING --device--> DONE       ok, or the eUICC's refusal (no fallback Profile, ...)
"""

from __future__ import annotations

from gateway.core.procedures.base import (
    DEVICE,
    DONE,
    INITIAL,
    START,
    Call,
    DeviceAnswer,
    DeviceWork,
    Env,
    Finish,
    Note,
    Output,
    Procedure,
    row,
)
from gateway.errors import RemoteProtocolError
from gateway.spec import codec

EXECUTING = "EXECUTING"

RESULTS = {0: "ok", 2: "profileNotInDisabledState", 5: "catBusy", 6: "fallbackNotAvailable",
           7: "commandError", 104: "ecallActive", 127: "undefinedError"}


class Fallback(Procedure):
    KIND = "fallback"
    TABLE = {
        (INITIAL, START): row("_start", EXECUTING),
        (EXECUTING, DEVICE): row("_executed", DONE),
    }

    def _start(self, env: Env, _: object) -> tuple[str, list[Output]]:
        request = codec.encode("ExecuteFallbackMechanismRequest", {"refreshFlag": True})
        return EXECUTING, [DeviceWork((Call("ExecuteFallbackMechanism", request),), env.config.refresh)]

    def _executed(self, env: Env, answer: object) -> tuple[str, list[Output]]:
        assert isinstance(answer, DeviceAnswer)
        if not answer.replies or answer.replies[0].sw != 0x9000:
            raise RemoteProtocolError(f"ExecuteFallbackMechanism not answered ({answer.stopped})")
        code = int(codec.decode("ExecuteFallbackMechanismResponse",
                                answer.replies[0].data)["executeFallbackMechanismResult"])
        outcome = "ok" if code == 0 else "failed"
        return DONE, [Note("fallback", outcome, RESULTS.get(code, str(code))), Finish(outcome)]

    def on_error(self, env: Env, previous: str, why: str) -> list[Output]:
        return [Note("fallback", "failed", why), Finish("failed", why)]
