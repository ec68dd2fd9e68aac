"""Shared constants and helpers of the service tests (a unique module name: tests are not packages)."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config"

PSK_HEX = "8f1c2a7be0d94c5aa1b2c3d4e5f60718"
MQTT_PASSWORD = "mqtt-pw-3b9f1e77c2"
API_TOKEN = "api-token-7f3e9a2c5d1b4e80"


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """A systemd unit's settings, each key with its values in order (keys repeat: ExecReload=)."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def copy_shipped(name: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED / name, dest)
    return dest
