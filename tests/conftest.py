"""Fixtures shared by every test tier. Tier-specific peers live in each folder's conftest.

`pki` (session scope) is an `hil.pki.RspPki` generated once per test session into a tmp
directory. Use it as:

    pki.ci.cert / pki.ci.key / pki.ci.cert_path     CERT.CI.ECDSA (trust anchor)
    pki.ci_pkid                                     euiccCiPKId (the CI's SKI, bytes)
    pki.eum                                         CERT.EUM.ECDSA (EID prefix 89049032)
    pki.euicc, pki.eid, pki.eid_bytes               the default eUICC and its EID
    pki.issue_euicc(eid) -> (key, cert)             another eUICC (same EID -> same pair)
    pki.dpauth, pki.dppb, pki.dptls                 SM-DP+ CERT.DPauth / CERT.DPpb / CERT.DP.TLS
    pki.eim_sign, pki.eim_tls                       eIM signing and TLS server credentials
    pki.tls_trust_path                              CA bundle for a TLS client of both servers
    pki.client_ca, pki.gateway_client               mutual TLS: client CA and client credential

Each credential has .key, .cert, .cert_der, .key_path, .cert_path, .ski. Do not write into
pki.directory except through pki.write_euicc(eid).
"""

from __future__ import annotations

import os

# every engine blob written by the tests (in this process and the gateways they start) is checked
# to hold only what can be read back (gateway.core.serial); production skips that walk
os.environ["IPAE_CHECK_BLOBS"] = "1"

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.service.demo import free_tcp, free_udp_pair
from hil.euicc import SoftEuicc
from hil.pki import RspPki, generate_pki


@pytest.fixture
def free_tcp_port() -> int:
    return free_tcp()


@pytest.fixture
def free_udp_port() -> int:
    """A free UDP port p on 127.0.0.1 with p - 1 free too (aiocoap's DTLS server binds one below)."""
    return free_udp_pair()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> RspPki:
    """The one test PKI of the session (software eUICCs, SM-DP+/eIM peers, TLS servers)."""
    return generate_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short scratch directory (unix socket paths must stay under 108 bytes; tmp_path's may not)."""
    d = Path(tempfile.mkdtemp(prefix="ipae-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def euicc(pki: RspPki) -> SoftEuicc:
    """A fresh software eUICC of the session PKI's default EID."""
    return SoftEuicc(pki, pki.eid_bytes)


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals made by socat, a real serial path: (driver end, modem end)."""
    a, b = tmp_path / "driver-tty", tmp_path / "modem-tty"
    proc = subprocess.Popen(["socat", "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (a.exists() and b.exists()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.01)
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(10)
