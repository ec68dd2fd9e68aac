"""The daemon's engine configuration comes from gateway.toml: the default eIM's id and address,
the default SM-DP+, and the EimConfigurationData of AddInitialEim with the eIM's signing
certificate (PEM or DER file) and TLS trust -- no engine hook needed; and [northbound.retry]
sets the schedule of the engine's retries (counted from the timers it starts, no waiting)."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import load_config
from gateway.core import actions as A
from gateway.core import events as E
from gateway.core.engine import Engine, EngineConfig
from gateway.core.retry import BackoffPolicy
from gateway.errors import ConfigError
from gateway.links.protocol import DeviceStatus
from gateway.service.supervisor import engine_config, reloaded_engine_config
from gateway.spec import codec, esipa

from service_support import PSK_HEX

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


# --- [northbound.retry] -> the engine's backoffs ---------------------------------------------

RETRY_EID = bytes.fromhex("89049032123451234512345678901235")


def _retry_config(etc: Path, dropin: Callable[[str, str], Path], retry: str) -> EngineConfig:
    dropin("50-eim.toml", '[northbound]\neim_fqdn = "eim.example.com"\neim_id = "eim-1"\n'
                          f"[northbound.retry]\n{retry}")
    return engine_config(load_config(etc / "gateway.toml"))


def _delivery_waits(config: EngineConfig, eid: bytes = RETRY_EID, limit: int = 20) -> tuple[list[float], str]:
    """Seconds the engine schedules between the attempts of one result delivery that the eIM's
    server keeps refusing (connection refused), until it gives up or `limit` waits; and the
    delivery's state at the end."""
    eng = Engine(config)
    (poll,) = [a for a in eng.handle(E.DeviceHello(eid, 0.0, DeviceStatus(eid, plmn="26201")))
               if isinstance(a, A.PostEsipa)]
    package = esipa.encode_from_eim("getEimPackageResponse", ("ipaEuiccDataRequest", {
        "tagList": b"\xa9", "eimTransactionId": b"\x00\x01"}))
    out = eng.handle(E.BackhaulAnswered(eid, 1.0, poll.request_id, package))
    now, waits = 1.0, []
    while len(waits) < limit:
        (post,) = [a for a in out if isinstance(a, A.PostEsipa) and a.function == "ProvideEimPackageResult"]
        out = eng.handle(E.BackhaulFailed(eid, now, post.request_id, "NetworkError", True, "refused"))
        timers = [a for a in out if isinstance(a, A.StartTimer) and a.name.startswith("retry:delivery:")]
        if not timers:
            break
        (timer,) = timers
        waits.append(timer.at - now)
        now = timer.at
        out = eng.handle(E.TimerFired(eid, now, timer.name))
    (delivery,) = eng.sessions[eid].deliveries.values()
    return waits, delivery["state"]


def test_retry_initial_max_and_multiplier_set_the_schedule_of_the_engines_deliveries(
        etc: Path, dropin: Callable[[str, str], Path]) -> None:
    config = _retry_config(etc, dropin, "initial_backoff_s = 10.0\nmax_backoff_s = 100.0\n"
                                        "multiplier = 3.0\njitter_ratio = 0.0\n")
    waits, state = _delivery_waits(config, limit=6)
    assert waits == [10.0, 30.0, 90.0, 100.0, 100.0, 100.0] and state == "SENDING"   # still retried
    default_waits, _ = _delivery_waits(_retry_config(etc, dropin, ""), limit=6)
    assert default_waits != waits
    assert all(0.8 * w <= d < w for d, w in zip(default_waits, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0], strict=True))


def test_retry_max_attempts_counts_every_attempt_then_the_delivery_is_given_up(
        etc: Path, dropin: Callable[[str, str], Path]) -> None:
    config = _retry_config(etc, dropin, "initial_backoff_s = 5.0\njitter_ratio = 0.0\nmax_attempts = 4\n")
    waits, state = _delivery_waits(config)
    assert waits == [5.0, 10.0, 20.0] and state == "FAILED"       # 4 attempts, 3 waits between them
    assert config.request_backoff.max_attempts == 3 and config.poll_backoff.max_attempts == 1
    one = _retry_config(etc, dropin, "max_attempts = 1\n")
    assert _delivery_waits(one) == ([], "FAILED")
    assert (one.request_backoff.max_attempts, one.poll_backoff.max_attempts) == (0, 0)


def test_retry_jitter_ratio_spreads_first_waits_of_a_fleet_within_its_fraction(
        etc: Path, dropin: Callable[[str, str], Path]) -> None:
    eids = [RETRY_EID[:12] + n.to_bytes(4, "big") for n in range(200)]
    exact = _retry_config(etc, dropin, "initial_backoff_s = 60.0\njitter_ratio = 0.0\n")
    assert {_delivery_waits(exact, e, limit=1)[0][0] for e in eids[:20]} == {60.0}
    spread = _retry_config(etc, dropin, "initial_backoff_s = 60.0\njitter_ratio = 0.5\n")
    firsts = [_delivery_waits(spread, e, limit=1)[0][0] for e in eids]
    assert all(30.0 <= w < 60.0 for w in firsts)
    assert min(firsts) < 33.0 and max(firsts) > 57.0
    assert len({round(w) for w in firsts}) > 25


def test_requests_and_polls_share_the_retry_shape_within_their_own_bounds(
        etc: Path, dropin: Callable[[str, str], Path]) -> None:
    config = _retry_config(etc, dropin, "initial_backoff_s = 45.0\nmax_backoff_s = 7200.0\n"
                                        "multiplier = 1.5\njitter_ratio = 0.3\n")
    assert config.delivery_backoff == BackoffPolicy(45.0, 7200.0, None, 1.5, 0.3)
    assert config.request_backoff == BackoffPolicy(45.0, 60.0, 3, 1.5, 0.3)
    assert config.poll_backoff == BackoffPolicy(30.0, 30.0, 1, 1.5, 0.3)


# --- per-device overrides (devices.d) -> the engine's batch planning -------------------------

def _euicc_package(eid: bytes, deletes: int) -> bytes:
    """A GetEimPackageResponse with an EuiccPackageRequest of `deletes` PSMOs (the signature is
    not checked by the IPA: the eUICC checks it)."""
    return esipa.encode_from_eim("getEimPackageResponse", ("euiccPackageRequest", {
        "euiccPackageSigned": {"eimId": "eim-1", "eidValue": eid, "counterValue": 1, "eimTransactionId": b"\x00\x07",
                               "euiccPackage": ("psmoList", [("delete", {"iccid": bytes(10)})] * deletes)},
        "eimSignature": bytes(64)}))


def _first_downlink(config: EngineConfig, eid: bytes, package: bytes) -> tuple[list[A.Action], list[A.Action]]:
    """(downlinks, audits) of a device's first wake whose poll brings `package`."""
    eng = Engine(config)
    (poll,) = [a for a in eng.handle(E.DeviceHello(eid, 0.0, DeviceStatus(eid, plmn="26201")))
               if isinstance(a, A.PostEsipa)]
    out = eng.handle(E.BackhaulAnswered(eid, 1.0, poll.request_id, package))
    return [a for a in out if isinstance(a, A.DOWNLINKS)], [a for a in out if isinstance(a, A.Audit)]


def test_a_devices_own_segment_size_and_batch_budget_reach_the_engines_batch_planning(
        etc: Path, dropin: Callable[[str, str], Path], write_credentials: Callable[[str], Path]) -> None:
    cut, small, plain = "89049032123451234512345678901235", "89001012012341234012345678901224", \
        "89049032123451234512345678901332"
    (etc / "devices.d").mkdir(exist_ok=True)
    (etc / "devices.d" / "fleet.toml").write_text(f"""
[[device]]
eid = "{cut}"
link = "coap"
identity = "cut"
segment_size = 100
[[device]]
eid = "{small}"
link = "coap"
identity = "small"
max_batch_bytes = 256
poll_interval_s = 7200.0
[[device]]
eid = "{plain}"
link = "coap"
identity = "plain"
""")
    write_credentials("[dtls_psk]\n" + "".join(f'{name} = "{PSK_HEX}"\n' for name in ("cut", "small", "plain")))
    dropin("50-eim.toml", '[northbound]\neim_fqdn = "eim.example.com"\neim_id = "eim-1"\n')
    config = engine_config(load_config(etc / "gateway.toml"))

    def load_euicc_package_blocks(eid: str) -> list[int]:
        e = bytes.fromhex(eid)
        (downlink,), _ = _first_downlink(config, e, _euicc_package(e, 20))
        assert isinstance(downlink, A.SendBatch)
        (step,) = [s for s in downlink.batch.steps if s.apdus[0][5:7] == b"\xbf\x51"]
        return [apdu[4] for apdu in step.apdus]          # Lc: data bytes of each STORE DATA block

    assert load_euicc_package_blocks(cut) == [100, 100, 100, 92]
    assert load_euicc_package_blocks(plain) == [255, 137]
    e = bytes.fromhex(small)
    (downlink,), audits = _first_downlink(config, e, _euicc_package(e, 20))
    assert isinstance(downlink, A.SendBatch)
    assert b"\xbf\x51" not in [s.apdus[0][5:7] for s in downlink.batch.steps]
    assert any(a.operation == "deviceLink" and a.result == "refused" and "256 bytes" in a.detail for a in audits)
    assert (config.idle_retry_s_of(e), config.idle_retry_s_of(bytes.fromhex(plain))) == (7200, 3600)


def test_a_reload_hands_the_engine_every_key_engine_config_reads(
        etc: Path, dropin: Callable[[str, str], Path], write_credentials: Callable[[str], Path]) -> None:
    eid = "89049032123451234512345678901235"
    before = engine_config(load_config(etc / "gateway.toml"))
    (etc / "devices.d").mkdir(exist_ok=True)
    (etc / "devices.d" / "one.toml").write_text(
        f'[[device]]\neid = "{eid}"\nlink = "coap"\nidentity = "one"\nsegment_size = 64\n')
    write_credentials(f'[dtls_psk]\none = "{PSK_HEX}"\n')
    dropin("50-all.toml", """
[northbound]
eim_fqdn = "eim.example.com"
default_smdp = "smdp.example.com"
polling_interval_s = 60.0
rearm_in_flight = 5
[northbound.retry]
initial_backoff_s = 3.0
max_backoff_s = 30.0
multiplier = 1.5
jitter_ratio = 0.5
max_attempts = 7
[device_defaults]
segment_size = 128
max_batch_bytes = 4096
poll_interval_s = 600.0
bpp_size_hint = 1000
authenticate_server_size_hint = 500
""")
    after = engine_config(load_config(etc / "gateway.toml"))
    changed = [f.name for f in dataclasses.fields(EngineConfig) if getattr(before, f.name) != getattr(after, f.name)]
    assert len(changed) >= 12, changed
    assert reloaded_engine_config(before, after) == after
    running = dataclasses.replace(before, seed=42)
    assert reloaded_engine_config(running, after).seed == 42
