"""Every PSMO and eCO (SGP.32 §2.11.1) relayed by the engine to a software eUICC.

Each case first downloads a profile through the engine (so there is something to enable,
disable, delete), then runs one EuiccPackageRequest; the eIM must get the eUICC's signed
result for exactly that operation, the device must be refreshed only after an
enable/disable, and nothing may be left on the eUICC's notification list. The eIM and SM-DP+
are the in-test responders of tests/core/peers.py (the real peers in hil/peers come later).
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.engine import EimEndpoint, Engine, EngineConfig
from gateway.links.memory import MemoryLink
from gateway.spec import codec
from hil.euicc import SoftEuicc
from hil.euicc.eim import eim_config_from
from hil.pki import RspPki
from tests.core.peers import MiniEim, MiniSmdp
from tests.core.rig import EngineRig, make_agent

ICCID = bytes.fromhex("98001032547698103214")
ENABLE = ("psmoList", ("enable", {"iccid": ICCID}))


def second_eim(pki: RspPki) -> dict[str, Any]:
    return {"eimId": "eim-2", "eimFqdn": "two.example", "counterValue": 0,
            "eimPublicKeyData": ("eimCertificate", pki.eim_sign.cert_der)}


CASES: list[tuple[str, tuple[str, tuple[str, Any]], list[Any], str, int | None, bool]] = [
    # id, operation, operations run before, expected result, expected code, refresh
    ("enable", ENABLE, [], "enableResult", 0, True),
    ("disable", ("psmoList", ("disable", {"iccid": ICCID})), [ENABLE], "disableResult", 0, True),
    ("delete", ("psmoList", ("delete", {"iccid": ICCID})), [], "deleteResult", 0, False),
    ("listProfileInfo", ("psmoList", ("listProfileInfo", {})), [], "listProfileInfoResult", None, False),
    ("getRAT", ("psmoList", ("getRAT", {})), [], "getRATResult", None, False),
    ("configureImmediateEnable", ("psmoList", ("configureImmediateEnable", {"immediateEnableFlag": None})), [],
     "configureImmediateEnableResult", 0, False),
    ("setFallbackAttribute", ("psmoList", ("setFallbackAttribute", {"iccid": ICCID})), [],
     "setFallbackAttributeResult", None, False),
    ("unsetFallbackAttribute", ("psmoList", ("unsetFallbackAttribute", {})), [],
     "unsetFallbackAttributeResult", None, False),
    ("setDefaultDpAddress", ("psmoList", ("setDefaultDpAddress", {"defaultDpAddress": "dp.example"})), [],
     "setDefaultDpAddressResult", None, False),
    ("addEim", ("ecoList", ("addEim", "SECOND")), [], "addEimResult", None, False),
    ("updateEim", ("ecoList", ("updateEim", {"eimId": "eim-test", "eimFqdn": "eim.example"})), [],
     "updateEimResult", 0, False),
    ("listEim", ("ecoList", ("listEim", {})), [], "listEimResult", None, False),
    ("deleteEim", ("ecoList", ("deleteEim", {"eimId": "eim-2"})), [("ecoList", ("addEim", "SECOND"))],
     "deleteEimResult", 0, False),
]


def _op(pki: RspPki, op: tuple[str, tuple[str, Any]]) -> tuple[str, tuple[str, Any]]:
    kind, (name, arg) = op
    return kind, (name, second_eim(pki) if arg == "SECOND" else arg)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_each_operation_is_relayed_and_its_signed_result_returned(pki: RspPki, case: Any) -> None:
    _, operation, before, result_name, code, refresh = case
    eim = MiniEim(pki)
    card = SoftEuicc(pki, pki.eid_bytes)
    card.state.eims.append(eim_config_from(card, eim.initial_eim()))
    card.commit()
    rig = EngineRig(Engine(EngineConfig(eims=(EimEndpoint(eim.eim_id, eim.fqdn),), seed=2)), MiniSmdp(pki), eim)
    agent, backend = make_agent(MemoryLink(rig), card)
    eim.queue_trigger(card.eid, "1$smdp.example$M", b"\x01")
    for n, pre in enumerate(before):
        kind, op = _op(pki, pre)
        eim.queue_package(card.eid, eim.euicc_package_request(card.eid, [op], bytes([0x10 + n]), kind))
    await agent.run_session()
    assert [p.iccid for p in card.profiles] == [ICCID]
    refreshes_before = len(backend.refreshes)
    kind, op = _op(pki, operation)
    eim.queue_package(card.eid, eim.euicc_package_request(card.eid, [op], b"\x20", kind))
    await agent.run_session()
    alternative, value = eim.results_of()[-1]
    assert alternative == "euiccPackageResult" and value[0] == "euiccPackageResultSigned"
    ((name, got),) = value[1]["euiccPackageResultDataSigned"]["euiccResult"]
    assert name == result_name
    if code is not None:
        assert got == code
    assert (len(backend.refreshes) > refreshes_before) == refresh
    assert card.notifications == []
    # what the eIM received is the eUICC's signed result, byte for byte
    assert codec.decode("ProvideEimPackageResult", eim.results[-1])["eidValue"] == card.eid
