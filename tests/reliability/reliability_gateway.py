"""The gateway process of the reliability tests: `python reliability_gateway.py CONFIG EIM_JSON`.

It runs `gateway.service.supervisor.Daemon` -- what `ipae-gateway run` runs -- with the engine
set up as `ipae-gateway demo` sets it up: the eIM peer as the configured eIM (its eimId and
address) and its EimConfigurationData for AddInitialEim, as a factory would provision the
eUICCs. EIM_JSON holds {"eim_id", "fqdn", "configuration": hex DER of EimConfigurationData,
"exchange_timeout_s"}. The process is meant to be killed (SIGKILL) at any instant; it also
dies with the test process (Linux PR_SET_PDEATHSIG), so a test that is itself killed or
crashes leaves no gateway behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.core.engine import EimEndpoint, Engine
from gateway.service.runtime import RuntimeOptions
from gateway.service.supervisor import Daemon, engine_config
from gateway.spec import codec


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:   # the parent was gone before the request took effect
        os._exit(1)


def main(config_path: Path, eim_path: Path) -> int:
    parent = os.environ.get("IPAE_TEST_PARENT_PID")
    if parent is not None and sys.platform == "linux":
        die_with_parent(int(parent))
    eim = json.loads(eim_path.read_text())
    initial = codec.decode("EimConfigurationData", bytes.fromhex(eim["configuration"]))

    def make_engine(config: Any) -> Engine:
        base = engine_config(config)
        return Engine(dataclasses.replace(base, eims=(EimEndpoint(eim["eim_id"], eim["fqdn"]),),
                                          initial_eim=initial))

    # an uplink gets its downlink (or Idle) before the device agent gives up waiting for it
    timeout = float(eim.get("exchange_timeout_s", 30.0))
    options = RuntimeOptions(exchange_timeout_s=timeout, busy_retry_s=1, stopping_retry_s=1)
    return asyncio.run(Daemon(config_path, make_engine=make_engine, runtime_options=options).run())


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
