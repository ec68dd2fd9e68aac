"""Fixtures for the hil/ tier: the test PKI every software eUICC, SM-DP+ and eIM test shares.

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

import pytest

from hil.pki import RspPki, generate_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> RspPki:
    return generate_pki(tmp_path_factory.mktemp("pki"))
