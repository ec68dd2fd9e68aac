"""The typed configuration: shipped files, strict validation, drop-ins, credentials, fleet."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import Credentials, GatewayFile, Secret, eid_check_digits, load_config, load_devices_csv
from gateway.config.schema import Origins, build, documented_keys
from gateway.errors import ConfigError

from service_support import API_TOKEN, MQTT_PASSWORD, PSK_HEX, SHIPPED, copy_shipped


def _uncomment_settings(text: str) -> str:
    """Turn every commented-out `# key = value` line into a live one."""
    return re.sub(r"^# ((?:\"[^\"]+\"|[a-z_0-9]+) = .*)$", r"\1", text, flags=re.M)


def _sections(text: str) -> dict[str, str]:
    blocks: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        m = re.fullmatch(r"\[([a-z_.]+)\]", line.strip())
        if m:
            current = m.group(1)
            continue
        blocks[current] = blocks.get(current, "") + line + "\n"
    return blocks


def test_shipped_gateway_toml_states_exactly_the_dataclass_defaults() -> None:
    data = tomllib.loads((SHIPPED / "gateway.toml").read_text())
    parsed = build(GatewayFile, data, Origins("gateway.toml"))
    assert parsed == GatewayFile()


def test_every_configuration_key_is_documented_in_shipped_gateway_toml() -> None:
    blocks = _sections((SHIPPED / "gateway.toml").read_text())
    missing = []
    for dotted, doc in documented_keys(GatewayFile).items():
        assert doc, f"{dotted} has no documentation in the model"
        section, _, key = dotted.rpartition(".")
        block = blocks.get(section, "")
        if not re.search(rf"^(# )?{key} = ", block, flags=re.M):
            missing.append(dotted)
        else:
            before = block.split(f"{key} = ")[0].rstrip().splitlines()
            assert before and before[-1].startswith("#"), f"{dotted} has no comment line above it"
    assert missing == []


def test_shipped_gateway_toml_with_every_optional_key_set_is_still_valid() -> None:
    text = _uncomment_settings((SHIPPED / "gateway.toml").read_text())
    data = tomllib.loads(text)
    parsed = build(GatewayFile, data, Origins("gateway.toml"))
    assert parsed.northbound.eim_fqdn == "eim.example.com"
    assert parsed.links.mqtt.username == "gateway"


def test_credentials_example_is_valid_commented_and_uncommented() -> None:
    text = (SHIPPED / "credentials.toml.example").read_text()
    assert build(Credentials, tomllib.loads(text), Origins("c")) == Credentials()
    live = build(Credentials, tomllib.loads(_uncomment_settings(text)), Origins("c"))
    assert live.psk("sensor-0001") == bytes(range(16))
    assert live.mqtt.password is not None and live.api.bearer_token is not None


def test_shipped_examples_load_together_as_one_fleet(etc: Path, dropin: Callable[..., Path],
                                                      write_credentials: Callable[..., Path]) -> None:
    copy_shipped("devices.d/example.toml", etc / "devices.d" / "example.toml")
    copy_shipped("devices.csv.example", etc / "devices.csv")
    dropin("50-fleet.toml", """
[gateway]
devices_csv = "devices.csv"
[links.mqtt]
enabled = true
broker_host = "127.0.0.1"
username = "gateway"
""")
    write_credentials(f"""
[mqtt]
password = "{MQTT_PASSWORD}"
[dtls_psk]
"meter-0001" = "{PSK_HEX}"
"meter-0002" = "{PSK_HEX}"
""")
    config = load_config(etc / "gateway.toml")
    assert [d.identity for d in config.devices] == ["meter-0001", "tracker-0001", "meter-0002", "tracker-0002"]
    meter, tracker = config.devices[0], config.devices[1]
    assert meter.eid == bytes.fromhex("89049032123451234512345678901235")
    assert (meter.segment_size, meter.max_batch_bytes, meter.poll_interval_s) == (200, 2048, 7200.0)
    assert (tracker.segment_size, tracker.max_batch_bytes) == (255, None)
    assert config.credentials.psk("meter-0001") == bytes.fromhex(PSK_HEX)
    assert config.device_by_identity("mqtt", "tracker-0002") is config.devices[3]


def test_relative_paths_follow_config_dir_and_db_path_follows_state_dir(etc: Path, dropin: Callable[..., Path]) -> None:
    dropin("10.toml", '[northbound]\neim_ca_file = "tls/ca.pem"\n')
    config = load_config(etc / "gateway.toml")
    assert config.northbound.eim_ca_file == etc / "tls" / "ca.pem"
    assert config.store.db_path == config.gateway.state_dir / "gateway.sqlite3"
    assert config.gateway.credentials_file == etc / "credentials.toml"


def test_dropins_merge_in_name_order_and_keep_sibling_keys(etc: Path, dropin: Callable[..., Path]) -> None:
    dropin("20-late.toml", '[gateway]\nlog_level = "warning"\n')
    dropin("10-early.toml", '[gateway]\nlog_level = "debug"\ngateway_id = "gw-7"\n')
    dropin("notes.txt", "not toml, not read")
    config = load_config(etc / "gateway.toml")
    assert config.gateway.log_level == "warning"
    assert config.gateway.gateway_id == "gw-7"
    assert config.gateway.shutdown_grace_s == 10.0
    assert [p.name for p in config.sources] == ["gateway.toml", "10-early.toml", "20-late.toml"]


def test_unknown_key_in_a_dropin_names_the_dropin_and_the_dotted_key(etc: Path, dropin: Callable[..., Path]) -> None:
    bad = dropin("30-typo.toml", "[links.coap]\nreceive_buffer = 1048576\n")
    with pytest.raises(ConfigError) as err:
        load_config(etc / "gateway.toml")
    assert err.value.file == str(bad)
    assert err.value.key == "links.coap.receive_buffer"
    assert "unknown key" in str(err.value) and "receive_buffer_bytes" in str(err.value)


def test_unknown_table_is_refused(etc: Path, dropin: Callable[..., Path]) -> None:
    dropin("30.toml", "[linkz.coap]\nport = 1\n")
    with pytest.raises(ConfigError, match="unknown key") as err:
        load_config(etc / "gateway.toml")
    assert err.value.key == "linkz"


@pytest.mark.parametrize(("snippet", "key", "expected"), [
    ('[links.coap]\nport = "5684"', "links.coap.port", "expected an integer from 1 to 65535, got a string '5684'"),
    ("[links.coap]\nport = 70000", "links.coap.port", "from 1 to 65535"),
    ("[links.coap]\nport = true", "links.coap.port", "expected an integer"),
    ("[links.coap]\nreceive_buffer_bytes = 100", "links.coap.receive_buffer_bytes", "from 262144"),
    ('[gateway]\nlog_level = "verbose"', "gateway.log_level", "one of 'debug', 'info', 'warning', 'error'"),
    ("[store]\noutbox_alarm_ratio = 1.5", "store.outbox_alarm_ratio", "from 0.1 to 1.0"),
    ('[northbound]\neim_fqdn = "not a host"', "northbound.eim_fqdn", "matching"),
    ('[northbound]\nadmin_protocol_version = "v2"', "northbound.admin_protocol_version", "matching"),
    ("[links]\ncoap = 3", "links.coap", "expected a table"),
    ('[links.serial]\nports = ["COM1"]', "links.serial.ports", "device paths under /dev/"),
    ('[policies.roaming]\nallowed_plmns = ["2080"]', "policies.roaming.allowed_plmns", "5 or 6 digits"),
    ('[policies.webhooks]\nurls = ["ftp://x"]', "policies.webhooks.urls", "http:// or https:// URL"),
    ("[policies.roaming]\nallowed_plmns = [20801]", "policies.roaming.allowed_plmns[0]", "expected a string"),
    ('[api]\ntcp_listen = "every interface"', "api.tcp_listen", "host name or an IPv4/IPv6 address"),
])
def test_wrong_type_or_bad_value_names_file_key_and_expectation(
        etc: Path, dropin: Callable[..., Path], snippet: str, key: str, expected: str) -> None:
    bad = dropin("40-bad.toml", snippet + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(etc / "gateway.toml")
    assert (err.value.file, err.value.key) == (str(bad), key)
    assert expected in str(err.value)
    assert str(err.value).startswith(f"{bad}:{key}: ")


def test_engine_size_hints_are_read_and_fit_the_engine_config(etc: Path, dropin: Callable[..., Path]) -> None:
    from gateway.core.config import EngineConfig
    defaults = load_config(etc / "gateway.toml").device_defaults
    assert (defaults.bpp_size_hint, defaults.authenticate_server_size_hint) == (
        EngineConfig().bpp_size_hint, EngineConfig().authenticate_server_size_hint)
    dropin("10.toml", "[device_defaults]\nbpp_size_hint = 65536\nauthenticate_server_size_hint = 0\n")
    defaults = load_config(etc / "gateway.toml").device_defaults
    engine = EngineConfig(bpp_size_hint=defaults.bpp_size_hint,
                          authenticate_server_size_hint=defaults.authenticate_server_size_hint)
    assert (engine.bpp_size_hint, engine.authenticate_server_size_hint) == (65536, 0)
    bad = dropin("40-bad.toml", "[device_defaults]\nbpp_size_hint = 3000000\n")
    with pytest.raises(ConfigError) as err:
        load_config(etc / "gateway.toml")
    assert (err.value.file, err.value.key) == (str(bad), "device_defaults.bpp_size_hint")


def test_a_float_setting_accepts_an_integer(etc: Path, dropin: Callable[..., Path]) -> None:
    dropin("10.toml", "[northbound]\nes9_timeout_s = 30\n")
    assert load_config(etc / "gateway.toml").northbound.es9_timeout_s == 30.0


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found") as err:
        load_config(tmp_path / "nope.toml")
    assert err.value.file == str(tmp_path / "nope.toml")


def test_malformed_toml_is_a_config_error_naming_the_file(etc: Path, dropin: Callable[..., Path]) -> None:
    bad = dropin("10.toml", "[gateway\nlog_level = 'x'\n")
    with pytest.raises(ConfigError, match="invalid TOML") as err:
        load_config(etc / "gateway.toml")
    assert err.value.file == str(bad)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o602])
def test_credentials_readable_or_writable_by_others_are_refused(
        etc: Path, write_credentials: Callable[..., Path], mode: int) -> None:
    path = write_credentials("", mode)
    with pytest.raises(ConfigError) as err:
        load_config(etc / "gateway.toml")
    assert err.value.file == str(path)
    assert f"{mode:04o}" in str(err.value)


def test_credentials_group_readable_by_a_foreign_group_are_refused(
        etc: Path, write_credentials: Callable[..., Path]) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a file's group to a foreign one needs root")
    path = write_credentials("", 0o640)
    os.chown(path, 0, 4242)
    with pytest.raises(ConfigError, match="not the ipae-gateway group"):
        load_config(etc / "gateway.toml")


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_private_credentials_are_accepted(etc: Path, write_credentials: Callable[..., Path], mode: int) -> None:
    write_credentials(f'[api]\nbearer_token = "{API_TOKEN}"\n', mode)
    config = load_config(etc / "gateway.toml")
    token = config.credentials.api.bearer_token
    assert token is not None and token.reveal() == API_TOKEN


def test_secrets_never_print_themselves(etc: Path, write_credentials: Callable[..., Path]) -> None:
    write_credentials(f'[mqtt]\npassword = "{MQTT_PASSWORD}"\n[dtls_psk]\n"a" = "{PSK_HEX}"\n')
    config = load_config(etc / "gateway.toml")
    shown = f"{config!r} {config} {config.credentials.mqtt.password}"
    assert MQTT_PASSWORD not in shown and PSK_HEX not in shown
    assert "<redacted>" in shown
    assert set(config.credentials.secret_values()) == {MQTT_PASSWORD, PSK_HEX}


def test_a_bad_psk_is_refused_without_showing_it(etc: Path, write_credentials: Callable[..., Path]) -> None:
    path = write_credentials('[dtls_psk]\n"sensor-1" = "0011223344556677"\n')
    with pytest.raises(ConfigError) as err:
        load_config(etc / "gateway.toml")
    assert (err.value.file, err.value.key) == (str(path), "dtls_psk.sensor-1")
    assert "exactly 16 bytes" in str(err.value) and "0011223344556677" not in str(err.value)


def test_plain_coap_needs_the_lab_flag(etc: Path, dropin: Callable[..., Path]) -> None:
    bad = dropin("10.toml", "[links.coap]\ndtls = false\n")
    with pytest.raises(ConfigError, match="allow_plain_lab") as err:
        load_config(etc / "gateway.toml")
    assert (err.value.file, err.value.key) == (str(bad), "links.coap.dtls")
    dropin("20.toml", "[links.coap]\nallow_plain_lab = true\n")
    assert load_config(etc / "gateway.toml").links.coap.dtls is False


def test_tcp_api_without_bearer_token_names_the_credentials_key(etc: Path, dropin: Callable[..., Path]) -> None:
    dropin("10.toml", '[api]\ntcp_listen = "127.0.0.1"\n')
    with pytest.raises(ConfigError) as err:
        load_config(etc / "gateway.toml")
    assert (err.value.file, err.value.key) == (str(etc / "credentials.toml"), "api.bearer_token")


def test_mqtt_needs_a_broker_and_a_password_for_its_user(etc: Path, dropin: Callable[..., Path],
                                                          write_credentials: Callable[..., Path]) -> None:
    dropin("10.toml", "[links.mqtt]\nenabled = true\n")
    with pytest.raises(ConfigError) as err:
        load_config(etc / "gateway.toml")
    assert err.value.key == "links.mqtt.broker_host"
    dropin("20.toml", '[links.mqtt]\nbroker_host = "broker.lan"\nusername = "gw"\n')
    with pytest.raises(ConfigError) as err:
        load_config(etc / "gateway.toml")
    assert err.value.key == "mqtt.password"
    write_credentials(f'[mqtt]\npassword = "{MQTT_PASSWORD}"\n')
    assert load_config(etc / "gateway.toml").mqtt_client_id.startswith("ipae-gateway-")


def test_inject_endpoint_needs_certificate_and_key(etc: Path, dropin: Callable[..., Path],
                                                   write_credentials: Callable[..., Path]) -> None:
    dropin("10.toml", '[northbound.inject]\nlisten = "::"\n')
    with pytest.raises(ConfigError) as err:
        load_config(etc / "gateway.toml")
    assert err.value.key == "northbound.inject.tls_cert_file"
    dropin("20.toml", '[northbound.inject]\ntls_cert_file = "tls/inject.pem"\n')
    with pytest.raises(ConfigError) as err:
        load_config(etc / "gateway.toml")
    assert err.value.key == "tls.inject_key_file"
    write_credentials('[tls]\ninject_key_file = "tls/inject.key"\n')
    config = load_config(etc / "gateway.toml")
    assert config.credentials.tls.inject_key_file == etc / "tls" / "inject.key"


def _device(eid: str, link: str = "coap", identity: str = "s1", extra: str = "") -> str:
    return f'[[device]]\neid = "{eid}"\nlink = "{link}"\nidentity = "{identity}"\n{extra}\n'


EID_A = "89049032123451234512345678901235"
EID_B = "89001012012341234012345678901224"


def test_coap_device_without_psk_names_the_missing_credentials_key(etc: Path) -> None:
    (etc / "devices.d").mkdir()
    (etc / "devices.d" / "a.toml").write_text(_device(EID_A, identity="meter-9"))
    with pytest.raises(ConfigError) as err:
        load_config(etc / "gateway.toml")
    assert (err.value.file, err.value.key) == (str(etc / "credentials.toml"), "dtls_psk.meter-9")


def test_device_on_a_disabled_link_is_refused(etc: Path) -> None:
    (etc / "devices.d").mkdir()
    (etc / "devices.d" / "a.toml").write_text(_device(EID_A, link="mqtt"))
    with pytest.raises(ConfigError, match="not enabled") as err:
        load_config(etc / "gateway.toml")
    assert err.value.key == "device[0].link"


def test_duplicate_eid_or_identity_across_fleet_files_is_refused(
        etc: Path, write_credentials: Callable[..., Path]) -> None:
    write_credentials(f'[dtls_psk]\ns1 = "{PSK_HEX}"\ns2 = "{PSK_HEX}"\n')
    (etc / "devices.d").mkdir()
    (etc / "devices.d" / "a.toml").write_text(_device(EID_A, identity="s1"))
    (etc / "devices.d" / "b.toml").write_text(_device(EID_A, identity="s2"))
    with pytest.raises(ConfigError, match="already defined") as err:
        load_config(etc / "gateway.toml")
    assert (err.value.file, err.value.key) == (str(etc / "devices.d" / "b.toml"), "device[0].eid")
    (etc / "devices.d" / "b.toml").write_text(_device(EID_B, identity="s1"))
    with pytest.raises(ConfigError, match="already bound") as err:
        load_config(etc / "gateway.toml")
    assert err.value.key == "device[0].identity"


def test_eid_with_wrong_check_digits_is_refused_with_the_right_ones(etc: Path) -> None:
    (etc / "devices.d").mkdir()
    (etc / "devices.d" / "a.toml").write_text(_device(EID_A[:30] + "99"))
    with pytest.raises(ConfigError, match=f"end in {EID_A[30:]}") as err:
        load_config(etc / "gateway.toml")
    assert err.value.key == "device[0].eid"
    assert eid_check_digits(EID_B[:30]) == EID_B[30:]


def test_device_missing_a_required_key_is_refused(etc: Path) -> None:
    (etc / "devices.d").mkdir()
    (etc / "devices.d" / "a.toml").write_text(f'[[device]]\neid = "{EID_A}"\nlink = "coap"\n')
    with pytest.raises(ConfigError, match="missing required key") as err:
        load_config(etc / "gateway.toml")
    assert err.value.key == "device[0].identity"


@pytest.mark.parametrize(("csv_text", "key", "message"), [
    ("eid,link,identity,segment_size\n" + EID_B + ",coap,s1,big\n", "line 2.segment_size", "expected an integer"),
    ("eid,link,identity,segment_size\n" + EID_B + ",coap,s1,999\n", "line 2.segment_size", "from 16 to 255"),
    ("eid,link,identity,colour\n", "line 1.colour", "unknown column"),
    ("eid,link\n", "line 1.identity", "missing required column"),
    ("# fleet\neid,link,identity\n\n" + EID_B + ",satellite,s1\n", "line 4.link", "one of 'coap', 'mqtt', 'serial'"),
    ("eid,link,identity\n" + EID_B + ",coap\n", "line 2", "expected 3 cells, got 2"),
])
def test_csv_import_errors_name_the_line_and_column(etc: Path, dropin: Callable[..., Path],
                                                    csv_text: str, key: str, message: str) -> None:
    dropin("10.toml", '[gateway]\ndevices_csv = "fleet.csv"\n')
    (etc / "fleet.csv").write_text(csv_text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(etc / "gateway.toml")
    assert (err.value.file, err.value.key) == (str(etc / "fleet.csv"), key)


def test_secret_type_redacts_every_rendering() -> None:
    s = Secret("hunter2-hunter2")
    assert "hunter2" not in f"{s} {s!r} {s:>40} {[s]}"
    assert s.reveal() == "hunter2-hunter2"


_toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10)
_known = sorted({k.split(".")[0] for k in documented_keys(GatewayFile)} | {"links", "northbound"})


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_known) | st.text(max_size=6),
                       st.dictionaries(st.text(max_size=12) | st.sampled_from(["port", "coap", "enabled", "retry"]),
                                       _toml_values, max_size=4), max_size=3))
def test_fuzzed_tables_give_a_config_or_a_config_error(data: dict[str, object]) -> None:
    try:
        build(GatewayFile, data, Origins("fuzz.toml"))
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.toml")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzed_file_bytes_give_a_config_or_a_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                           blob: bytes) -> None:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "gateway.toml").write_bytes(blob)
    try:
        load_config(d / "gateway.toml")
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.text(alphabet=st.sampled_from('abc,"#\n\r 0123456789-_.'), max_size=300))
def test_fuzzed_device_csv_gives_devices_or_a_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                           text: str) -> None:
    path = tmp_path_factory.mktemp("csv") / "fleet.csv"
    path.write_text("eid,link,identity,segment_size\n" + text)
    try:
        load_devices_csv(path)
    except ConfigError as exc:
        assert exc.file == str(path)
