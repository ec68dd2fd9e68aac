"""`python -m hil.rig` as a rig operator runs it: real processes, a state file, a modem process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hil.euicc import SoftEuicc
from hil.peers.common import iccid_to_str
from hil.pki import RspPki

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


def rig(*args: str, timeout: float = 45.0) -> tuple[int, dict[str, Any] | None, str]:
    proc = subprocess.run([sys.executable, "-m", "hil.rig", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "error"})
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    return proc.returncode, summary, proc.stderr


def test_probe_prints_a_step_log_and_a_json_summary(pki: RspPki) -> None:
    code, summary, log = rig("probe", "--backend", "soft", "--pki", str(pki.directory), "--json")
    assert code == 0, log
    assert summary is not None and summary["ok"] and summary["scenario"] == "probe"
    assert summary["card"]["eid"] == pki.eid.upper() and summary["card"]["testCard"]["testCard"]
    assert summary["card"]["euiccInfo2"]["sgp32Versions"] == ["1.2.0"]
    assert {s["name"] for s in summary["steps"]} >= {"select ISD-R", "GetEUICCInfo1", "GetEUICCInfo2",
                                                      "GetEimConfigurationData", "ProfileInfoList",
                                                      "ListNotification", "GetCerts"}
    assert summary["apdus"] == sum(s["apdus"] for s in summary["steps"]) > 0
    assert "ok   GetEUICCInfo2" in log and "APDUs" in log and "scenario probe succeeded" in log


def test_download_then_enable_in_two_runs_with_a_state_file(pki: RspPki, tmp_path: Path) -> None:
    state = tmp_path / "card.json"
    backend = f"soft,state={state}"
    code, summary, log = rig("download", "--backend", backend, "--pki", str(pki.directory), "--json")
    assert code == 0, log
    assert summary is not None
    iccid = summary["operations"][0]["iccid"]
    # a second process: new peers, same card (its eIM and counter come from the state file)
    code, summary, log = rig("enable", "--backend", backend, "--pki", str(pki.directory), "--iccid", iccid, "--json")
    assert code == 0, log
    assert summary is not None and [e["eimId"] for e in summary["card"]["eims"]] == ["ipae-test-eim"]
    card = SoftEuicc(pki, pki.eid_bytes, state)
    assert [(iccid_to_str(p.iccid), p.state) for p in card.profiles] == [(iccid, "enabled")]
    assert card.notifications == []


def test_lifecycle_through_a_modem_emulator_process_on_a_socat_pty(pki: RspPki, tmp_path: Path,
                                                                    pty_pair: tuple[str, str]) -> None:
    state = tmp_path / "modem-card.json"
    modem = subprocess.Popen([sys.executable, "-m", "hil.modem_emulator", "--pty", pty_pair[1], "--pki",
                              str(pki.directory), "--eid", pki.eid, "--state", str(state), "--quirks",
                              "urc,max-apdu=100,lowercase"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert modem.stdout is not None and "ready" in modem.stdout.readline()
        code, summary, log = rig("lifecycle", "--backend", f"serial:{pty_pair[0]},segment=100,timeout=5",
                                 "--pki", str(pki.directory), "--json")
    finally:
        modem.terminate()
        modem.wait(10)
        if modem.stdout is not None:
            modem.stdout.close()
    assert code == 0, log
    assert summary is not None and summary["backend"]["name"] == "serial"
    assert [o["name"] for o in summary["operations"] if o["ok"]] == ["download", "enable", "disable", "delete"]
    card = SoftEuicc(pki, pki.eid_bytes, state)
    assert card.profiles == [] and card.notifications == [] and len(card.state.eims) == 1


def test_missing_pki_bad_backend_and_absent_port_exit_2(tmp_path: Path, pki: RspPki) -> None:
    code, _, log = rig("probe", "--backend", "soft", "--pki", str(tmp_path / "nothing"))
    assert code == 2 and "no test PKI" in log
    code, summary, log = rig("probe", "--backend", "floppy", "--pki", str(pki.directory), "--json")
    assert code == 2 and summary is not None and "unknown backend" in summary["error"]
    started = time.monotonic()
    code, _, log = rig("probe", "--backend", f"serial:{tmp_path / 'no-such-tty'}", "--pki", str(pki.directory))
    assert code == 2 and "no-such-tty" in log and time.monotonic() - started < 20
