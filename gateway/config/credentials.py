"""The credentials file: every secret the gateway holds, apart from gateway.toml.

gateway.toml may be world-readable and kept in version control; credentials.toml may not.
`check_permissions` refuses a file any other user could read or change: no access at all for
"other", no group write, group read only for the daemon's own group (the `ipae-gateway`
group the package creates, or the group of the running process), owner root or the running
user. Values are wrapped in `Secret` as they are read.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import stat
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.schema import setting, table
from gateway.config.secret import Secret
from gateway.errors import ConfigError

# DTLSSocket/tinydtls keeps PSKs in 16-byte buffers and overflows them with longer keys, and
# keeps identities in 32 bytes (docs/dtls-limits.md): the configuration admits only what works.
DTLS_PSK_LEN = 16
DTLS_PSK_IDENTITY_MAX = 32

SERVICE_GROUP = "ipae-gateway"


def _hex_psk(value: Any) -> str | None:
    text = value.reveal() if isinstance(value, Secret) else str(value)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        return "a PSK as an even number of hex digits"
    if len(key) != DTLS_PSK_LEN:
        return (f"a PSK of exactly {DTLS_PSK_LEN} bytes ({2 * DTLS_PSK_LEN} hex digits): the DTLS stack "
                "takes no other length (docs/dtls-limits.md)")
    return None


def _token(value: Any) -> str | None:
    return None if len(value) >= 16 else "a token of at least 16 characters"


@dataclass(frozen=True, slots=True)
class MqttCredentials:
    password: Secret | None = setting(None, "Password of links.mqtt.username at the broker", secret=True)


@dataclass(frozen=True, slots=True)
class ApiCredentials:
    bearer_token: Secret | None = setting(
        None, "Bearer token required on the TCP management API (api.tcp_listen)", check=_token, secret=True)


@dataclass(frozen=True, slots=True)
class TlsCredentials:
    inject_key_file: Path | None = setting(None, "Private key (PEM) of northbound.inject.tls_cert_file")
    eim_client_key_file: Path | None = setting(None, "Private key (PEM) of northbound.eim_client_cert_file")


def _hmac_secret(value: Any) -> str | None:
    return None if len(value) >= 32 else "a secret of at least 32 characters"


@dataclass(frozen=True, slots=True)
class WebhookCredentials:
    hmac_secret: Secret | None = setting(
        None, "HMAC-SHA256 key signing every webhook POST (policies.webhooks.urls)", check=_hmac_secret, secret=True)


@dataclass(frozen=True, slots=True)
class Credentials:
    mqtt: MqttCredentials = table(MqttCredentials, "MQTT broker login")
    api: ApiCredentials = table(ApiCredentials, "Management API")
    tls: TlsCredentials = table(TlsCredentials, "TLS private keys")
    webhooks: WebhookCredentials = table(WebhookCredentials, "Webhook signing key")
    dtls_psk: Mapping[str, Secret] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}),
        metadata={"doc": "DTLS PSK (hex) per device link identity", "check": _hex_psk, "secret": True})

    def psk(self, identity: str) -> bytes | None:
        """The DTLS pre-shared key bound to a link identity, as bytes."""
        secret = self.dtls_psk.get(identity)
        return bytes.fromhex(secret.reveal()) if secret is not None else None

    def secret_values(self) -> tuple[str, ...]:
        """Every secret in clear, for the log redaction filter."""
        values = [s.reveal() for s in self.dtls_psk.values()]
        values += [s.reveal() for s in (self.mqtt.password, self.api.bearer_token, self.webhooks.hmac_secret)
                   if s is not None]
        return tuple(values)


def check_permissions(path: Path) -> None:
    """Refuse a credentials file that another user could read or change."""
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    where = str(path)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError("credentials must be a regular file", file=where)
    if mode & 0o007:
        raise ConfigError(f"credentials file is accessible to every user (mode {mode:04o}); "
                          "run: chmod 0640 " + where, file=where)
    if mode & 0o030:
        raise ConfigError(f"credentials file is group-writable (mode {mode:04o}); run: chmod 0640 " + where,
                          file=where)
    if st.st_uid not in (0, os.geteuid()):
        raise ConfigError(f"credentials file is owned by uid {st.st_uid}, not root nor this user", file=where)
    if mode & 0o040 and st.st_gid != os.getegid() and st.st_gid != _service_gid():
        raise ConfigError(f"credentials file is readable by group {st.st_gid}, which is not the "
                          f"{SERVICE_GROUP} group (mode {mode:04o}); run: chmod 0600 {where} or "
                          f"chgrp {SERVICE_GROUP} {where}", file=where)


def _service_gid() -> int | None:
    try:
        return grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return None
