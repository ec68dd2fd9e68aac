"""The serial modem as the device agent's eUICC backend (``--backend ...agent_backend:make_backend``).

The agent's command line takes a zero-argument factory, so the modem is described by the
environment of the agent process:

    IPAE_MODEM_PORT          serial device (required), e.g. /dev/ttyUSB2
    IPAE_MODEM_BAUD          115200
    IPAE_MODEM_SEGMENT_SIZE  255   most data bytes per APDU the modem carries
    IPAE_MODEM_MAX_LE        256   cap of each GET RESPONSE
    IPAE_MODEM_MODE          auto  auto | cgla | csim
    IPAE_MODEM_TIMEOUT_S     5
    IPAE_MODEM_CGLA_CLA      basic basic (the modem sets the channel bits, 27.007) | session
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from gateway.errors import ConfigError
from gateway.links.serial.modem import CLA_MODES, AsyncModemEuicc, ModemConfig, ModemEuicc, Mode

_MODES: tuple[Mode, ...] = ("auto", "cgla", "csim")


def _number(env: Mapping[str, str], key: str, default: str) -> float:
    text = env.get(key, default)
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"not a number: {text!r}", key=key) from None


def config_from_env(env: Mapping[str, str]) -> tuple[str, int, ModemConfig]:
    """(device, baud rate, ModemConfig) from IPAE_MODEM_* variables; ConfigError names the key."""
    device = env.get("IPAE_MODEM_PORT")
    if not device:
        raise ConfigError("the serial device of the modem is not set", key="IPAE_MODEM_PORT")
    mode = env.get("IPAE_MODEM_MODE", "auto")
    if mode not in _MODES:
        raise ConfigError(f"{mode!r} is not one of {', '.join(_MODES)}", key="IPAE_MODEM_MODE")
    cla = env.get("IPAE_MODEM_CGLA_CLA", "basic")
    if cla not in CLA_MODES:
        raise ConfigError(f"{cla!r} is not one of {', '.join(CLA_MODES)}", key="IPAE_MODEM_CGLA_CLA")
    values = {key: _number(env, f"IPAE_MODEM_{key.upper()}", default)
              for key, default in (("baud", "115200"), ("segment_size", "255"), ("max_le", "256"),
                                   ("timeout_s", "5"))}
    try:
        config = ModemConfig(segment_size=int(values["segment_size"]), max_le=int(values["max_le"]),
                             mode=mode, timeout_s=values["timeout_s"], cgla_cla=cla)
    except Exception as exc:
        raise ConfigError(str(exc), key="IPAE_MODEM_*") from exc
    return device, int(values["baud"]), config


def make_backend() -> AsyncModemEuicc:
    device, baud, config = config_from_env(os.environ)
    return AsyncModemEuicc(ModemEuicc.open(device, config, baudrate=baud))
