"""The daemon's engine configuration comes from gateway.toml: the default eIM's id and address,
the default SM-DP+, and the EimConfigurationData of AddInitialEim with the eIM's signing
certificate (PEM or DER file) and TLS trust -- no engine hook needed."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import load_config
from gateway.core.engine import EngineConfig
from gateway.errors import ConfigError
from gateway.service.supervisor import engine_config
from gateway.spec import codec

CI_PKID = "f54172bdf98a95d65cbeb88a38a1c11d800a85c3"


def _certificate(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))


@pytest.fixture
def certificates(etc: Path) -> tuple[x509.Certificate, Path, x509.Certificate, Path]:
    signing, tls = _certificate("eIM signing"), _certificate("eIM TLS CA")
    signing_path, tls_path = etc / "eim-signing.pem", etc / "eim-tls.der"
    signing_path.write_bytes(signing.public_bytes(serialization.Encoding.PEM))
    tls_path.write_bytes(tls.public_bytes(serialization.Encoding.DER))
    return signing, signing_path, tls, tls_path


def test_the_initial_eim_default_smdp_and_eim_id_reach_the_engine(
        etc: Path, dropin: Callable[[str, str], Path],
        certificates: tuple[x509.Certificate, Path, x509.Certificate, Path]) -> None:
    signing, signing_path, tls, tls_path = certificates
    dropin("50-eim.toml", f"""
[northbound]
eim_fqdn = "eim.example.com"
eim_port = 8443
eim_id = "eim-operator-1"
default_smdp = "smdp.example.com:9443"
[northbound.initial_eim]
enabled = true
certificate_file = "{signing_path}"
tls_trust_file = "{tls_path}"
ci_pkid = "{CI_PKID}"
""")
    engine = engine_config(load_config(etc / "gateway.toml"))
    assert [(e.eim_id, e.fqdn) for e in engine.eims] == [("eim-operator-1", "eim.example.com:8443")]
    assert engine.default_smdp == "smdp.example.com:9443"
    assert engine.initial_eim == {
        "eimId": "eim-operator-1", "eimFqdn": "eim.example.com:8443", "counterValue": 0,
        "eimPublicKeyData": ("eimCertificate", signing.public_bytes(serialization.Encoding.DER)),
        "trustedPublicKeyDataTls": ("trustedCertificateTls", tls.public_bytes(serialization.Encoding.DER)),
        "euiccCiPKId": bytes.fromhex(CI_PKID)}
    assert codec.decode("EimConfigurationData", codec.encode("EimConfigurationData", engine.initial_eim)) == \
        engine.initial_eim


def test_without_an_eim_id_the_fqdn_is_the_id_and_no_initial_eim_unless_enabled(
        etc: Path, dropin: Callable[[str, str], Path],
        certificates: tuple[x509.Certificate, Path, x509.Certificate, Path]) -> None:
    dropin("50-eim.toml", '[northbound]\neim_fqdn = "eim.example.com"\n')
    engine = engine_config(load_config(etc / "gateway.toml"))
    assert [(e.eim_id, e.fqdn) for e in engine.eims] == [("eim.example.com", "eim.example.com")]
    assert engine.initial_eim is None and engine.default_smdp is None
    dropin("60-initial.toml", f'[northbound.initial_eim]\nenabled = true\ncertificate_file = "{certificates[1]}"\n')
    initial = engine_config(load_config(etc / "gateway.toml")).initial_eim
    assert initial is not None
    assert (initial["eimId"], initial["eimIdType"]) == ("eim.example.com", 2)     # eimIdTypeFqdn


@pytest.mark.parametrize(("northbound", "initial", "key"), [
    ('eim_fqdn = "eim.example.com"\n', "enabled = true\n", "northbound.initial_eim.certificate_file"),
    ("", 'enabled = true\ncertificate_file = "eim.pem"\n', "northbound.eim_fqdn"),
])
def test_an_initial_eim_missing_what_it_needs_is_refused_naming_the_key(
        etc: Path, dropin: Callable[[str, str], Path], northbound: str, initial: str, key: str) -> None:
    dropin("50-eim.toml", f"[northbound]\n{northbound}[northbound.initial_eim]\n{initial}")
    with pytest.raises(ConfigError) as info:
        load_config(etc / "gateway.toml")
    assert info.value.key == key


@pytest.mark.parametrize("content", [None, b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_an_unreadable_eim_certificate_is_a_config_error_naming_the_key(
        etc: Path, dropin: Callable[[str, str], Path], content: bytes | None) -> None:
    path = etc / "eim-signing.pem"
    if content is not None:
        path.write_bytes(content)
    dropin("50-eim.toml", f'[northbound]\neim_fqdn = "eim.example.com"\n'
                          f'[northbound.initial_eim]\nenabled = true\ncertificate_file = "{path}"\n')
    config = load_config(etc / "gateway.toml")
    with pytest.raises(ConfigError) as info:
        engine_config(config)
    assert info.value.key == "northbound.initial_eim.certificate_file"


@pytest.mark.parametrize(("key", "value"), [("eim_id", '""'), ("default_smdp", '"not an address!"'),
                                            ("default_smdp", '"smdp.example.com:123456"')])
def test_bad_northbound_values_are_refused(etc: Path, dropin: Callable[[str, str], Path], key: str,
                                           value: str) -> None:
    dropin("50-eim.toml", f"[northbound]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(etc / "gateway.toml")
    assert info.value.key == f"northbound.{key}"


def test_the_polling_interval_and_size_hint_keys_reach_the_engine(
        etc: Path, dropin: Callable[[str, str], Path]) -> None:
    dropin("50-poll.toml", "[northbound]\npolling_interval_s = 120.0\n"
                           "[device_defaults]\nbpp_size_hint = 65536\nauthenticate_server_size_hint = 1024\n")
    engine = engine_config(load_config(etc / "gateway.toml"))
    assert (engine.poll_interval_s, engine.bpp_size_hint, engine.authenticate_server_size_hint) == (120.0, 65536, 1024)


def test_rearm_in_flight_reaches_the_engine_and_defaults_to_the_engines_own(
        etc: Path, dropin: Callable[[str, str], Path]) -> None:
    assert engine_config(load_config(etc / "gateway.toml")).rearm_in_flight == EngineConfig().rearm_in_flight
    dropin("50-rearm.toml", "[northbound]\nrearm_in_flight = 7\n")
    assert engine_config(load_config(etc / "gateway.toml")).rearm_in_flight == 7
    dropin("60-rearm.toml", "[northbound]\nrearm_in_flight = -1\n")
    with pytest.raises(ConfigError, match="rearm_in_flight"):
        load_config(etc / "gateway.toml")
