"""`ipae-gateway demo`: every device downloads, enables, lists and deletes a profile through the
real gateway (CoAP/DTLS and MQTT via mosquitto) against the real eIM and SM-DP+ peers."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.service import demo

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_runs_every_operation_on_every_device_and_ends_with_a_json_summary() -> None:
    done = subprocess.run([sys.executable, "-m", "gateway", "demo", "--devices", "2", "--json", "--timeout", "60"],
                          capture_output=True, text=True, timeout=240, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["devices"] == 2
    assert summary["operations_ordered"] == summary["operations_succeeded"] == 8
    assert summary["notifications_pending"] == 0 and summary["failures"] == []
    # install, enable, disable, delete: four notifications per device reach a server
    assert summary["notifications_delivered"] >= 8
    assert summary["round_trips"] >= 2 * 4 and summary["seconds"] > 0
    assert summary["webhook_events"] == 8     # installed, enabled, disabled, deleted: signed and verified
    assert "download ok" in done.stderr and "delete ok" in done.stderr


def test_the_demo_refuses_to_start_when_a_part_is_missing_and_names_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "PARTS", demo.PARTS + (("hil.peers.no_such_peer", "the SM-DS peer"),))
    args = argparse.Namespace(devices=1, json=True, timeout=1.0, wake=0.1, keep=None)
    assert demo.run(args) == demo.EXIT_MISSING
    out, err = capsys.readouterr()
    assert "the SM-DS peer (hil.peers.no_such_peer" in err
    assert json.loads(out.strip().splitlines()[-1])["missing"][0].startswith("the SM-DS peer")
