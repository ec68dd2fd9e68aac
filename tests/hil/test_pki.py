"""hil.pki: the generated RSP test PKI has the SGP.22 shape and works for real TLS."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hil import rspcrypto as rc
from hil.pki import CREDENTIALS, EUM_EID_PREFIX, RspPki, generate_pki

REPO = Path(__file__).resolve().parents[2]


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def test_ci_is_a_self_signed_ca_with_the_ci_role_and_its_ski_is_euicc_ci_pkid(pki: RspPki) -> None:
    ci = pki.ci.cert
    assert ci.issuer == ci.subject
    ci.verify_directly_issued_by(ci)
    bc = _ext(ci, x509.BasicConstraints)
    assert bc.critical and bc.value.ca  # type: ignore[attr-defined]
    assert rc.rsp_roles(ci) == {rc.OID_RSP_ROLE_CI}
    assert pki.ci_pkid == _ext(ci, x509.SubjectKeyIdentifier).value.digest  # type: ignore[attr-defined]
    assert len(pki.ci_pkid) == 20


def test_every_issued_certificate_has_ski_and_aki_equal_to_its_issuer_ski(pki: RspPki) -> None:
    issuers = {"eum": pki.ci, "euicc": pki.eum, "dpauth": pki.ci, "dppb": pki.ci, "dptls": pki.ci,
               "eim_sign": pki.ci, "eim_tls": pki.tls_ca, "gateway_client": pki.client_ca}
    for name, issuer in issuers.items():
        cred = getattr(pki, name)
        assert rc.authority_key_identifier(cred.cert) == issuer.ski, name
        assert cred.ski == x509.SubjectKeyIdentifier.from_public_key(cred.public_key).digest, name
        rc.verify_issued_by(cred.cert, issuer.cert)


def test_certificates_carry_the_sgp22_role_oids(pki: RspPki) -> None:
    expected = {"eum": "2.23.146.1.2.1.2", "euicc": "2.23.146.1.2.1.1", "dptls": "2.23.146.1.2.1.3",
                "dpauth": "2.23.146.1.2.1.4", "dppb": "2.23.146.1.2.1.5"}
    for name, oid in expected.items():
        assert {o.dotted_string for o in rc.rsp_roles(getattr(pki, name).cert)} == {oid}, name


def test_eum_name_constraint_is_critical_and_names_the_eid_prefix(pki: RspPki) -> None:
    nc = _ext(pki.eum.cert, x509.NameConstraints)
    assert nc.critical
    assert rc.eum_permitted_prefixes(pki.eum.cert) == [("ipae-gateway Test EUM", EUM_EID_PREFIX)]
    assert _ext(pki.eum.cert, x509.BasicConstraints).value.path_length == 0  # type: ignore[attr-defined]


def test_euicc_certificate_names_the_eid_and_never_expires(pki: RspPki) -> None:
    cert = pki.euicc.cert
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == pki.eid
    assert pki.eid.startswith(EUM_EID_PREFIX) and rc.eid_check_digits_ok(pki.eid)
    assert cert.not_valid_after_utc.year == 9999
    assert pki.eid_bytes == bytes.fromhex(pki.eid)


def test_issue_euicc_is_stable_per_eid_and_distinct_across_eids(pki: RspPki) -> None:
    a = rc.eid_with_check_digits(EUM_EID_PREFIX + "0" * 21 + "7")
    b = rc.eid_with_check_digits(EUM_EID_PREFIX + "0" * 21 + "8")
    key_a, cert_a = pki.issue_euicc(a)
    assert pki.issue_euicc(bytes.fromhex(a)) == (key_a, cert_a)
    assert pki.issue_euicc(b)[1].public_key() != cert_a.public_key()
    assert pki.issue_euicc(pki.eid) == (pki.euicc.key, pki.euicc.cert)
    assert rc.euicc_eid(cert_a) == a


def test_tls_certificates_name_localhost_and_loopback_addresses(pki: RspPki) -> None:
    for cred in (pki.dptls, pki.eim_tls):
        san = _ext(cred.cert, x509.SubjectAlternativeName).value
        assert "localhost" in san.get_values_for_type(x509.DNSName)  # type: ignore[attr-defined]
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}  # type: ignore[attr-defined]
        assert {"127.0.0.1", "::1"} <= ips
        eku = _ext(cred.cert, x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in eku  # type: ignore[operator]


def test_private_keys_are_not_world_readable(pki: RspPki) -> None:
    for name in CREDENTIALS:
        mode = (pki.directory / f"{name}.key.pem").stat().st_mode
        assert mode & 0o077 == 0, name


async def _handshake(pki: RspPki, server_cred_name: str, *, client_cert: bool,
                     host: str) -> tuple[str, bool]:
    server_cred = getattr(pki, server_cred_name)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(server_cred.cert_path, server_cred.key_path)
    if client_cert:
        server_ctx.verify_mode = ssl.CERT_REQUIRED
        server_ctx.load_verify_locations(pki.client_ca.cert_path)
    peer_seen: list[bool] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_seen.append(writer.get_extra_info("peercert") is not None)
        writer.write(b"ok")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(pki.tls_trust_path))
    if client_cert:
        client_ctx.load_cert_chain(pki.gateway_client.cert_path, pki.gateway_client.key_path)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname=host)
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    return data.decode(), bool(peer_seen and peer_seen[0])


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_smdp_tls_certificate_is_trusted_through_the_ci(pki: RspPki, host: str) -> None:
    assert await _handshake(pki, "dptls", client_cert=False, host=host) == ("ok", False)


async def test_eim_tls_with_gateway_client_certificate_is_mutually_trusted(pki: RspPki) -> None:
    assert await _handshake(pki, "eim_tls", client_cert=True, host="localhost") == ("ok", True)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "hil.pki", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60, check=False)


def test_cli_writes_pem_files_and_readme_then_keeps_them_unless_forced(tmp_path: Path) -> None:
    target = tmp_path / "pki"
    eid = rc.eid_with_check_digits(EUM_EID_PREFIX + "5" * 22)
    first = _run_cli(str(target), "--eid", eid)
    assert first.returncode == 0, first.stderr
    assert "wrote test PKI" in first.stdout
    for name in CREDENTIALS:
        assert (target / f"{name}.cert.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
        assert (target / f"{name}.key.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    readme = (target / "README.md").read_text()
    assert all(f"`{name}.cert.pem`" in readme for name in CREDENTIALS)
    loaded = generate_pki(target)
    extra = x509.load_pem_x509_certificate((target / f"euicc-{eid}.cert.pem").read_bytes())
    assert rc.verify_euicc_chain(extra, loaded.eum.cert, loaded.ci.cert) == eid

    ci_before = (target / "ci.cert.pem").read_bytes()
    again = _run_cli(str(target))
    assert again.returncode == 0 and "kept existing" in again.stdout
    assert (target / "ci.cert.pem").read_bytes() == ci_before

    forced = _run_cli(str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (target / "ci.cert.pem").read_bytes() != ci_before
    fresh = generate_pki(target)
    rc.verify_euicc_chain(fresh.euicc.cert, fresh.eum.cert, fresh.ci.cert)


def test_cli_refuses_an_invalid_eid_with_a_message(tmp_path: Path) -> None:
    result = _run_cli(str(tmp_path / "pki"), "--eid", "1234")
    assert result.returncode == 2
    assert "32 decimal digits" in result.stderr


def test_generate_pki_loads_an_existing_directory_identically(pki: RspPki) -> None:
    again = generate_pki(pki.directory)
    assert again.ci.cert == pki.ci.cert and again.euicc.cert == pki.euicc.cert
    assert again.dpauth.key.private_numbers() == pki.dpauth.key.private_numbers()
