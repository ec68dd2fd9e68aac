"""Validation of the [policies] tables: types, limits, cross-checks, each error naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.policy import DeviceFacts, group_of, members

SHIPPED = Path(__file__).resolve().parents[2] / "config"
EID = "89049032123451234512345678901235"


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    (d / "gateway.d").mkdir(parents=True)
    text = (SHIPPED / "gateway.toml").read_text().replace(
        'state_dir = "/var/lib/ipae-gateway"', f'state_dir = "{tmp_path / "state"}"')
    (d / "gateway.toml").write_text(text)
    return d


def dropin(etc: Path, text: str, name: str = "50-policies.toml") -> Path:
    path = etc / "gateway.d" / name
    path.write_text(text)
    return path


def credentials(etc: Path, text: str) -> Path:
    path = etc / "credentials.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path




def test_full_policies_example_loads_with_groups_countries_and_bindings(etc: Path) -> None:
    dropin(etc, f"""
[policies.fallback]
enabled = true
failed_wakeups = 2
min_signal_dbm = -115

[policies.fallback_wave]
max_concurrent = 5

[policies.imei]
mode = "configured"
bindings = {{ "{EID}" = "353290611234567" }}

[policies.roaming]
enabled = true
home_plmns = ["20801"]
[policies.roaming.countries."724"]
max_days = 90
window_days = 120

[policies.webhooks]
urls = ["https://hooks.example.com/ipae"]
events = ["fallback.executed", "roaming.threshold"]

[policies.groups.meters]
tags = ["water-meter"]
[policies.groups.meters.fallback]
enabled = true
attach_failures = 1
[policies.groups.plant]
sites = ["plant-3"]
""")
    credentials(etc, '[webhooks]\nhmac_secret = "0123456789abcdef0123456789abcdef"\n')
    config = load_config(etc / "gateway.toml")
    p = config.policies
    assert p.fallback.min_signal_dbm == -115 and p.fallback_wave.max_concurrent == 5
    assert p.roaming.countries["724"].max_days == 90
    assert p.imei.bindings[EID] == "353290611234567"
    assert list(p.groups) == ["meters", "plant"]
    assert p.fallback_for("meters").attach_failures == 1
    assert p.fallback_for("plant") == p.fallback
    assert config.credentials.webhooks.hmac_secret is not None
    assert "0123456789abcdef0123456789abcdef" in config.credentials.secret_values()
    meter = DeviceFacts.from_tags(bytes.fromhex(EID), ["water-meter", "site:plant-3"])
    pump = DeviceFacts.from_tags(bytes.fromhex("89049032123451234512345678901999"), ["site:plant-3", "model:p1"])
    assert pump.site == "plant-3" and pump.model == "p1"
    assert group_of(p.groups, meter) == "meters" and group_of(p.groups, pump) == "plant"
    assert members(p.groups, "plant", [meter, pump]) == sorted([meter.eid, pump.eid])
    with pytest.raises(ConfigError, match="no device group"):
        members(p.groups, "nope", [meter])


@pytest.mark.parametrize(("snippet", "key", "expected"), [
    ("[policies.fallback]\nfailed_wakeups = -1", "policies.fallback.failed_wakeups", "from 0 to 1000"),
    ('[policies.fallback]\nrefresh = "reboot"', "policies.fallback.refresh", "'uicc-reset', 'modem-reset'"),
    ("[policies.fallback]\nmin_signal_dbm = 10", "policies.fallback.min_signal_dbm", "from -150 to 0"),
    ("[policies.fallback_wave]\nmax_concurrent = 0", "policies.fallback_wave.max_concurrent", "from 1 to 10000"),
    ('[policies.imei]\nmode = "sometimes"', "policies.imei.mode", "one of 'off'"),
    ("[policies.roaming]\nhome_plmns = [\"2080\"]", "policies.roaming.home_plmns", "5 or 6 digits"),
    ('[policies.roaming.countries."724"]\nmax_days = "ninety"', 'policies.roaming.countries.724.max_days',
     "expected an integer"),
    ('[policies.roaming.countries."724"]\nmax_days = 100\nwindow_days = 90',
     'policies.roaming.countries.724.max_days', "cannot exceed window_days"),
    ('[policies.roaming.countries."Brazil"]\nmax_days = 10', 'policies.roaming.countries.Brazil',
     "mobile country code"),
    ("[policies.webhooks]\nevents = [\"Everything\"]", "policies.webhooks.events", "event types"),
    ('[policies.imei]\nbindings = { "123" = "353290611234567" }', 'policies.imei.bindings.123', "32 digits"),
    (f'[policies.imei]\nbindings = {{ "{EID}" = "12" }}', f'policies.imei.bindings.{EID}', "14 to 16 digits"),
    ("[policies.groups.empty]\n", "policies.groups.empty", "at least one of tags, sites, models, eids"),
    ('[policies.groups.g]\neids = ["123"]', "policies.groups.g.eids", "EIDs of 32 digits"),
    ('[policies.groups.g]\ntags = ["x"]\ncolour = "red"', "policies.groups.g.colour", "unknown key"),
    ('[policies.groups.g]\ntags = ["x"]\n[policies.groups.g.fallback]\nenabled = true\nattach_failures = 0',
     "policies.groups.g.fallback.enabled", "needs a trigger"),
    ("[policies.fallback]\nreturn_after_s = 7200.0\nreturn_after_max_s = 3600.0",
     "policies.fallback.return_after_max_s", "cannot be shorter"),
    ('[policies.webhooks]\nurls = ["http://hooks.example.com/x"]', "policies.webhooks.urls[0]", "allow_plain_lab"),
])
def test_bad_policy_values_name_the_file_the_key_and_the_expectation(
        etc: Path, snippet: str, key: str, expected: str) -> None:
    credentials(etc, '[webhooks]\nhmac_secret = "0123456789abcdef0123456789abcdef"\n')
    bad = dropin(etc, snippet + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(etc / "gateway.toml")
    assert (err.value.file, err.value.key) == (str(bad), key), str(err.value)
    assert expected in str(err.value)


def test_webhook_urls_without_the_hmac_secret_name_the_credentials_key(etc: Path) -> None:
    creds = credentials(etc, "")
    dropin(etc, '[policies.webhooks]\nurls = ["https://hooks.example.com/x"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(etc / "gateway.toml")
    assert (err.value.file, err.value.key) == (str(creds), "webhooks.hmac_secret")


def test_a_short_hmac_secret_is_refused_without_showing_it(etc: Path) -> None:
    creds = credentials(etc, '[webhooks]\nhmac_secret = "short-secret"\n')
    with pytest.raises(ConfigError) as err:
        load_config(etc / "gateway.toml")
    assert (err.value.file, err.value.key) == (str(creds), "webhooks.hmac_secret")
    assert "short-secret" not in str(err.value) and "at least 32 characters" in str(err.value)
