"""`ipae-gateway check-config`: OK and a secret-free summary, or the file and key and exit 2."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.service import check_config_cli
from service_support import API_TOKEN, MQTT_PASSWORD, PSK_HEX


def _check(config: Path) -> int:
    parser = argparse.ArgumentParser()
    check_config_cli.add_arguments(parser)
    return check_config_cli.run(parser.parse_args(["--config", str(config)]))


def test_valid_configuration_prints_ok_and_a_summary_without_secrets(
        etc: Path, dropin: Callable[..., Path], write_credentials: Callable[..., Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    dropin("50.toml", '[gateway]\ngateway_id = "site-17"\n[links.mqtt]\nenabled = true\nbroker_host = "broker.lan"\n'
                      'username = "gw"\n[api]\ntcp_listen = "127.0.0.1"\n')
    write_credentials(f'[mqtt]\npassword = "{MQTT_PASSWORD}"\n[api]\nbearer_token = "{API_TOKEN}"\n'
                      f'[dtls_psk]\nmeter-1 = "{PSK_HEX}"\n')
    (etc / "devices.d").mkdir()
    (etc / "devices.d" / "site.toml").write_text(
        '[[device]]\neid = "89049032123451234512345678901235"\nlink = "coap"\nidentity = "meter-1"\n')
    assert _check(etc / "gateway.toml") == 0
    out = capsys.readouterr().out
    assert out.startswith("OK\n")
    assert "gateway id:  site-17" in out
    assert "coaps on [::]:5684" in out and "mqtts broker broker.lan:8883" in out
    assert "devices:     1 (1 coap)" in out
    assert "1 DTLS PSKs, MQTT password, API token" in out
    for secret in (MQTT_PASSWORD, API_TOKEN, PSK_HEX):
        assert secret not in out


def test_invalid_configuration_exits_2_naming_file_and_key(
        etc: Path, dropin: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    bad = dropin("60.toml", "[northbound.retry]\njitter = 0.5\n")
    assert _check(etc / "gateway.toml") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: {bad}:northbound.retry.jitter: unknown key")


def test_missing_configuration_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _check(tmp_path / "absent.toml") == 2
    assert "file not found" in capsys.readouterr().err


def test_check_config_is_a_registered_cli_command() -> None:
    from gateway.cli import COMMANDS

    assert COMMANDS["check-config"][0] == "gateway.service.check_config_cli"
