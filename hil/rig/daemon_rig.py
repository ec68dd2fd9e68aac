"""The gateway daemon itself (`ipae-gateway run`) with the rig's card behind a CoAP/DTLS agent.

Theory of operation. `--link coap` takes the rig one step closer to a deployment than the
in-memory link of `RigGateway`: it writes a gateway configuration into a temporary directory
(CoAP/DTLS on a free loopback port, the eIM peer as northbound, one device bound to the card's
EID with a fresh PSK), starts `gateway.service.supervisor.Daemon` on it in this event loop (the
whole daemon: store, runtime, policy gate, links, management API), and runs the reference
device agent over CoAP/DTLS with the rig's card backend. The engine is given the eIM's
configuration for AddInitialEim, as `ipae-gateway demo` does. `wake()`, `totals` and
`refreshes` are those of `RigGateway`, so the scenarios do not care which one runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from gateway.core.config import EimEndpoint
from gateway.core.engine import Engine
from gateway.service.demo import free_udp_pair
from hil.agent.agent import Agent
from hil.agent.coap_transport import CoapAgentTransport
from hil.rig.backends import AsyncBackend, RigBackend
from hil.rig.gateway_rig import RIG_IMEI, WakeTotals, _Problems

IDENTITY = "rig-device"


def write_config(directory: Path, *, eid: bytes, psk: bytes, coap_port: int, eim_fqdn: str, ca_file: str) -> Path:
    host, _, port = eim_fqdn.rpartition(":")
    (directory / "devices.d").mkdir(parents=True, exist_ok=True)
    (directory / "devices.d" / "rig.toml").write_text(
        f'[[device]]\neid = "{eid.hex()}"\nlink = "coap"\nidentity = "{IDENTITY}"\nname = "rig card"\n')
    credentials = directory / "credentials.toml"
    credentials.write_text(f'[dtls_psk]\n{IDENTITY} = "{psk.hex()}"\n')
    os.chmod(credentials, 0o600)
    config = directory / "gateway.toml"
    config.write_text(f"""# written by python -m hil.rig --link coap
[gateway]
gateway_id = "rig"
state_dir = "{directory / 'state'}"
log_level = "warning"
shutdown_grace_s = 5.0

[northbound]
eim_fqdn = "{host}"
eim_port = {int(port) if port.isdigit() else 443}
eim_ca_file = "{ca_file}"

[links.coap]
listen = "127.0.0.1"
port = {coap_port}

[api]
socket_path = "{directory / 'api.sock'}"

[device_defaults]
poll_interval_s = 60.0
""")
    return config


class DaemonRig:
    """`async with DaemonRig(...) as gw: await gw.wake()`: the daemon plus a CoAP/DTLS agent."""

    def __init__(self, backend: RigBackend, eid: bytes, *, tls_ca_file: str, eim_id: str, eim_fqdn: str,
                 initial_eim: dict[str, Any] | None = None) -> None:
        self.backend = AsyncBackend(backend)
        self.eid = eid
        self.tls_ca_file = tls_ca_file
        self.eim_id = eim_id
        self.eim_fqdn = eim_fqdn
        self.initial_eim = initial_eim
        self.totals = WakeTotals()
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> DaemonRig:
        from gateway.service.supervisor import Daemon, engine_config

        try:
            tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="ipae-rig-daemon-"))
            psk = os.urandom(16)
            coap_port = free_udp_pair()
            config = write_config(Path(tmp), eid=self.eid, psk=psk, coap_port=coap_port, eim_fqdn=self.eim_fqdn,
                                  ca_file=self.tls_ca_file)

            def make_engine(cfg: Any) -> Engine:
                return Engine(dataclasses.replace(engine_config(cfg), eims=(EimEndpoint(self.eim_id, self.eim_fqdn),),
                                                  initial_eim=self.initial_eim))

            self.daemon = Daemon(config, make_engine=make_engine)
            task = asyncio.create_task(self.daemon.run(), name="rig daemon")
            self._stack.push_async_callback(self._stop, task)
            await self._ready(task)
            problems = _Problems(self.totals)
            logging.getLogger("gateway").addHandler(problems)
            self._stack.callback(logging.getLogger("gateway").removeHandler, problems)
            # an agent closing its DTLS session makes aiocoap log an alert as a warning: not news here
            coap_log = logging.getLogger("coap-server")
            self._stack.callback(coap_log.setLevel, coap_log.level)
            coap_log.setLevel(logging.ERROR)
            transport = CoapAgentTransport("127.0.0.1", coap_port, self.eid, identity=IDENTITY, psk=psk)
            self._stack.push_async_callback(transport.close)
            self.agent = Agent(Agent.make_status(self.eid, imei=RIG_IMEI), self.backend, transport)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _ready(self, task: asyncio.Task[int]) -> None:
        for _ in range(600):
            if task.done():
                raise OSError(f"the gateway daemon stopped at start-up (exit code {task.result()})")
            if getattr(self.daemon, "api", None) is not None:
                return
            await asyncio.sleep(0.05)
        raise OSError("the gateway daemon did not become ready in 30 s")

    async def _stop(self, task: asyncio.Task[int]) -> None:
        self.daemon.stop_event.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)

    async def wake(self) -> None:
        self.totals.add(await self.agent.run_session())

    @property
    def refreshes(self) -> list[str]:
        return self.backend.refreshes
