"""The CoAP socket's receive buffer: granted beyond rmem_max with CAP_NET_ADMIN, and a warning
naming the key when the kernel caps it (the daemon runs without that capability)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.links.sockets import set_receive_buffer

RMEM_MAX = Path("/proc/sys/net/core/rmem_max")
REPO = Path(__file__).resolve().parents[2]


def rmem_max() -> int:
    return int(RMEM_MAX.read_text())


pytestmark = pytest.mark.skipif(not RMEM_MAX.exists(), reason="Linux socket buffer limits only")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs CAP_NET_ADMIN (root)")
def test_a_process_with_cap_net_admin_gets_a_buffer_beyond_rmem_max() -> None:
    wanted = 4 * rmem_max()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert set_receive_buffer(sock, wanted) == wanted


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="drops CAP_NET_ADMIN with setpriv, which needs root")
def test_without_cap_net_admin_the_server_warns_that_rmem_max_caps_the_configured_buffer(
        tmp_path: Path) -> None:
    wanted = 4 * rmem_max()
    script = tmp_path / "serve.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, logging
        from gateway.links.base import DeviceCredential, DeviceRegistry
        from gateway.links.coap import CoapServer, CoapServerConfig
        from gateway.service.demo import free_udp_pair

        async def main() -> None:
            registry = DeviceRegistry([DeviceCredential("d", bytes(16), bytes(16))])
            server = CoapServer(None, registry, CoapServerConfig(dtls_port=free_udp_pair(), receive_buffer={wanted}))
            await server.start()
            await server.close()

        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        asyncio.run(main())
    """))
    done = subprocess.run(["setpriv", "--bounding-set=-net_admin", sys.executable, str(script)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"receive buffer, not the {wanted // 1024} KiB configured (links.coap.receive_buffer_bytes)" in done.stderr
    assert f"got a {rmem_max() // 1024} KiB" in done.stderr
