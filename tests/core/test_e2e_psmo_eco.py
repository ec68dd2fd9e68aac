"""Every PSMO and eCO (SGP.32 §2.11.1) queued at the real eIM peer (admin API), signed by it,
relayed by the engine to a software eUICC, its signed result returned and verified.

Each case first downloads a profile from the real SM-DP+ peer through the engine (so there is
something to enable, disable, delete), then runs one EuiccPackageRequest: the eIM must hold
the eUICC's verified result for exactly that operation, the device must be refreshed only
after an enable/disable, and nothing may be left on the eUICC's notification list.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway.links.memory import MemoryLink
from hil.pki import RspPki
from tests.core.driver import ICCID, ICCID_DIGITS, make_agent, running_peers

ENABLE = ("psmo", {"op": "enable", "iccid": ICCID_DIGITS})


def second_eim(pki: RspPki) -> dict[str, Any]:
    return {"op": "addEim", "eimId": "eim-2", "eimFqdn": "two.example", "counterValue": 0,
            "eimCertificate": base64.b64encode(pki.eim_sign.cert_der).decode()}


CASES: list[tuple[str, tuple[str, dict[str, Any]], list[Any], str, int | None, bool]] = [
    # id, operation, operations run before, expected result, expected code, refresh
    ("enable", ENABLE, [], "enableResult", 0, True),
    ("disable", ("psmo", {"op": "disable", "iccid": ICCID_DIGITS}), [ENABLE], "disableResult", 0, True),
    ("delete", ("psmo", {"op": "delete", "iccid": ICCID_DIGITS}), [], "deleteResult", 0, False),
    ("listProfileInfo", ("psmo", {"op": "listProfileInfo"}), [], "listProfileInfoResult", None, False),
    ("getRAT", ("psmo", {"op": "getRAT"}), [], "getRATResult", None, False),
    ("configureImmediateEnable", ("psmo", {"op": "configureImmediateEnable", "immediateEnableFlag": True}), [],
     "configureImmediateEnableResult", 0, False),
    ("setFallbackAttribute", ("psmo", {"op": "setFallbackAttribute", "iccid": ICCID_DIGITS}), [],
     "setFallbackAttributeResult", None, False),
    ("unsetFallbackAttribute", ("psmo", {"op": "unsetFallbackAttribute"}), [],
     "unsetFallbackAttributeResult", None, False),
    ("setDefaultDpAddress", ("psmo", {"op": "setDefaultDpAddress", "defaultDpAddress": "dp.example"}), [],
     "setDefaultDpAddressResult", None, False),
    ("addEim", ("eco", {"op": "addEim", "SECOND": True}), [], "addEimResult", None, False),
    ("updateEim", ("eco", {"op": "updateEim", "self": True}), [], "updateEimResult", 0, False),
    ("listEim", ("eco", {"op": "listEim"}), [], "listEimResult", None, False),
    ("deleteEim", ("eco", {"op": "deleteEim", "eimId": "eim-2"}), [("eco", {"op": "addEim", "SECOND": True})],
     "deleteEimResult", 0, False),
]


def _op(pki: RspPki, op: dict[str, Any]) -> dict[str, Any]:
    return second_eim(pki) if op.get("SECOND") else op


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_each_operation_is_relayed_and_its_verified_signed_result_reaches_the_eim(pki: RspPki, case: Any) -> None:
    _, (kind, operation), before, result_name, code, refresh = case
    async with running_peers(pki) as peers:
        card = peers.card()
        agent, backend = make_agent(MemoryLink(peers.driver()), card)
        await peers.download(card.eid, await peers.order(size=2048))
        for pre_kind, pre in before:
            await peers.queue(card.eid, pre_kind, {"operations": [_op(pki, pre)]})
        await agent.run_session()
        assert [p.iccid for p in card.profiles] == [ICCID]
        refreshes_before = len(backend.refreshes)
        package = await peers.queue(card.eid, kind, {"operations": [_op(pki, operation)]})
        await agent.run_session()
        result = (await peers.one_result_per_package(card.eid))[package["packageId"]]
        assert result["kind"] == "euiccPackageResultSigned" and result["verified"], result
        (got,) = result["decoded"]["euiccPackageResultSigned"]["euiccPackageResultDataSigned"]["euiccResult"]
        ((name, value),) = got.items()
        assert name == result_name
        if code is not None:
            assert value == code
        assert (len(backend.refreshes) > refreshes_before) == refresh
        assert card.notifications == []
