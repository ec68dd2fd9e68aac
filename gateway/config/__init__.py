"""Typed, validated configuration of the gateway (DESIGN principle 9).

`load_config(path)` reads gateway.toml and its gateway.d/ drop-ins, the credentials file and
the device fleet, and returns one frozen `Config`; every problem is a
`gateway.errors.ConfigError` naming the file and the dotted key. The model lives in
`model.py` (one dataclass per table), the strict TOML-to-dataclass conversion in `schema.py`.
"""

from gateway.config.credentials import Credentials, check_permissions
from gateway.config.devices import Device, eid_check_digits, load_devices_csv, load_devices_toml
from gateway.config.load import DEFAULT_CONFIG, Config, load_config
from gateway.config.model import GatewayFile
from gateway.config.secret import Secret

__all__ = [
    "DEFAULT_CONFIG", "Config", "Credentials", "Device", "GatewayFile", "Secret", "check_permissions",
    "eid_check_digits", "load_config", "load_devices_csv", "load_devices_toml",
]
