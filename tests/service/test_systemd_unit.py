"""The shipped unit: systemd accepts it, and its sandbox scores as well as we claim."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from service_support import REPO, unit_settings

UNIT = REPO / "systemd" / "ipae-gateway.service"
EXPOSURE_THRESHOLD = 2.5
"""systemd-analyze security's 0-10 exposure scale: below 2.5 is rated "OK" (lower is safer)."""

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def _testable_copy(tmp_path: Path) -> Path:
    """The unit with its binary pointed at an executable that exists here (verify checks it)."""
    fake = tmp_path / "ipae-gateway"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / "ipae-gateway.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/ipae-gateway", str(fake)))
    return unit


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # man:ipae-gateway(1) exists once the package is installed (test_deb verifies the unit there).
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(_testable_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_security_exposure_is_below_threshold(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                             str(_testable_copy(tmp_path))], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    score, rating = float(match.group(1)), match.group(2)
    print(f"systemd-analyze security exposure: {score} {rating}")
    assert score < EXPOSURE_THRESHOLD, result.stdout
    assert rating == "OK"


def test_unit_runs_as_notify_service_with_watchdog_and_own_user() -> None:
    s = unit_settings(UNIT)
    assert s["Type"] == ["notify"]
    assert s["Restart"] == ["on-failure"]
    assert s["WatchdogSec"] and s["WatchdogSec"][0] != "0"
    assert s["User"] == ["ipae-gateway"] and s["Group"] == ["ipae-gateway"]
    assert s["SupplementaryGroups"] == ["dialout"]
    for key in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
        assert s[key] == ["ipae-gateway"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "@system-service" in s["SystemCallFilter"]


def test_unit_checks_configuration_before_start_and_reload() -> None:
    s = unit_settings(UNIT)
    assert s["ExecStartPre"][0].startswith("/usr/bin/ipae-gateway check-config")
    assert s["ExecReload"][0].startswith("/usr/bin/ipae-gateway check-config")
    assert s["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"


def test_stop_timeout_leaves_room_for_the_configured_drain() -> None:
    from gateway.config.model import GatewaySection

    stop = int(unit_settings(UNIT)["TimeoutStopSec"][0].rstrip("s"))
    assert stop > GatewaySection().shutdown_grace_s + 5
