"""Device-link benchmark: N devices download a profile through the gateway over CoAP/DTLS or MQTT.

    python bench/links.py --transport coap --devices 1000 --rtt-ms 1500 --json
    python bench/links.py --transport mqtt --devices 100 --rtt-ms 1500 --bandwidth-bps 200000

The gateway (the link adapter and a scripted handler shaped like the engine's profile download:
GetEuiccChallenge+GetEUICCInfo1, AuthenticateServer, PrepareDownload, the BPP as one batch of
ES8+ segments, then Idle) runs in a subprocess, so its CPU time and peak RSS are its own. This
process runs the link simulator (RTT, bandwidth, loss per device) and N reference agents on a
minimal scripted eUICC (answers 9000, data for the ES10 calls and the last BPP segment).

Each device first *attaches* (DTLS handshake or MQTT CONNECT/SUBSCRIBE, and a Hello -> Idle
exchange), then all devices download at once; `wall_s` is the download phase. The floor is the
engine's exchanges x RTT + each device's bytes / bandwidth. `setup_s` reports the attach phase
separately (3 RTT of DTLS handshake + 1 exchange; 2-3 RTT of TCP/MQTT + 1 exchange).

`--probe-dtls` instead measures aiocoap's DTLS server: concurrent handshakes, sessions kept,
memory per session.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/links.py`: import the project from the repository, and keep this folder
# (whose queue.py would shadow the standard library's) off the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [e for e in sys.path if Path(e or ".").resolve() != _HERE]

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace

from gateway.links import protocol as p  # noqa: E402
from gateway.links.base import DeviceCredential, DeviceRegistry  # noqa: E402
from gateway.service.demo import free_tcp, free_udp_pair  # noqa: E402
from gateway.spec.apdu import ISD_R_AID, store_data  # noqa: E402

GATEWAY_USER, GATEWAY_PASSWORD = "ipae-gateway", "bench-gateway-secret"


def eid_of(n: int) -> bytes:
    return bytes.fromhex(f"89049032123451234512{n:012d}")


def psk_of(n: int) -> bytes:
    return f"bench-psk-{n}".encode()


def registry_for(devices: int) -> DeviceRegistry:
    return DeviceRegistry(DeviceCredential(f"dev{n}", eid_of(n), psk_of(n)) for n in range(devices))


def _der(tag: bytes, body: bytes) -> bytes:
    n = len(body)
    length = bytes((n,)) if n < 128 else (b"\x81" + bytes((n,)) if n < 256 else b"\x82" + n.to_bytes(2, "big"))
    return tag + length + body


def _es10(tag: bytes, size: int) -> p.Step:
    return p.Step(tuple(store_data(_der(tag, bytes(size)))))


def download_batches(profile_bytes: int, hints: bool = True) -> list[p.Batch]:
    """The device-link shape of one profile download (SGP.22 §3.1.3 as the engine batches it)."""
    segments = [_der(b"\xbf\x23", bytes(90)), _der(b"\xa0", _der(b"\x87", bytes(30))),
                _der(b"\xa1", _der(b"\x88", bytes(60)))]
    remaining = profile_bytes - sum(len(s) for s in segments)
    while remaining > 0:
        size = min(1000, remaining)
        segments.append(_der(b"\x86", bytes(size)))
        remaining -= size + 4
    segments[-1] = segments[-1][:-1] + b"\xff"  # the scripted card answers the marked last segment
    bpp = tuple(p.Step(tuple(store_data(s)), stop_if_data=True) for s in segments)
    batches = [
        p.Batch(1, (_es10(b"\xbf\x2e", 0), _es10(b"\xbf\x20", 0)), aid=ISD_R_AID),
        p.Batch(2, (_es10(b"\xbf\x38", 1200),), aid=ISD_R_AID),
        p.Batch(3, (_es10(b"\xbf\x21", 400),), aid=ISD_R_AID),
        p.Batch(4, bpp, aid=ISD_R_AID),
    ]
    if not hints:
        return batches
    # the engine knows roughly what comes next (AuthenticateServer after the challenge, the
    # BPP after PrepareDownload): it says so, and CoAP agents fetch those blocks with the uplink
    sizes = [len(p.encode_downlink(p.BatchMsg(b))) for b in batches[1:]] + [None]
    return [replace(b, next_size_hint=n) for b, n in zip(batches, sizes)]


class BenchCard:
    """Minimal scripted eUICC: channel 1, SELECT ok, STORE DATA 9000, data for ES10 calls."""

    def transmit(self, apdu: bytes) -> bytes:
        ins, p1 = apdu[1], apdu[2]
        if ins == 0x70:
            return b"\x01\x90\x00" if p1 == 0 else b"\x90\x00"
        if ins == 0xE2 and p1 == 0x91:
            data = apdu[5:5 + apdu[4]] if len(apdu) > 5 else b""
            if data[:2] in (b"\xbf\x2e", b"\xbf\x20", b"\xbf\x38", b"\xbf\x21") or data.endswith(b"\xff"):
                return _der(b"\xbf\x37" if data.endswith(b"\xff") else data[:2], bytes(60)) + b"\x90\x00"
        return b"\x90\x00"


@dataclass
class DownloadHandler:
    profile_bytes: int
    hints: bool = True
    plans: dict[bytes, list[p.Batch]] = field(default_factory=dict)
    attached: set[bytes] = field(default_factory=set)
    exchanges: int = 0
    downlink_bytes: int = 0

    async def exchange(self, eid: bytes, uplink: p.Uplink) -> p.Downlink:
        self.exchanges += 1
        if isinstance(uplink, p.Hello) and eid not in self.attached:
            self.attached.add(eid)
            self.plans[eid] = download_batches(self.profile_bytes, self.hints)
            return p.Idle(1)
        plan = self.plans.get(eid)
        if plan:
            return p.BatchMsg(plan.pop(0))
        return p.Idle(3600)


def floor_exchanges(profile_bytes: int) -> tuple[int, int]:
    """(exchanges, downlink+uplink bytes) of one device's download phase."""
    batches = download_batches(profile_bytes)
    down = sum(len(p.encode_downlink(p.BatchMsg(b))) for b in batches) + len(p.encode_downlink(p.Idle(3600)))
    return len(batches) + 1, down


# --- the gateway process --------------------------------------------------------------------


def _proc_stats(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick
    rss = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024
    return cpu, rss


async def serve(args: argparse.Namespace) -> None:
    import logging
    logging.basicConfig(level=logging.ERROR)
    registry = registry_for(args.devices)
    handler = DownloadHandler(args.profile_kb * 1024, hints=not args.no_hints)
    server: object
    if args.serve == "coap":
        from gateway.links.coap import CoapServer, CoapServerConfig
        server = CoapServer(handler, registry, CoapServerConfig(dtls_port=args.port))
        await server.start()
    else:
        from gateway.links.mqtt import MqttConfig, MqttGateway
        server = MqttGateway(handler, registry, MqttConfig("127.0.0.1", args.port, GATEWAY_USER, GATEWAY_PASSWORD,
                                                           client_id="bench-gateway"))
        await server.start()
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "stop":
            break
        cpu, rss = _proc_stats(os.getpid())
        print(json.dumps({"cpu_s": cpu, "rss_mb": rss, "exchanges": handler.exchanges}), flush=True)
    await server.close()  # type: ignore[attr-defined]


# --- the device side ----------------------------------------------------------------------------


class GatewayProcess:
    def __init__(self, kind: str, devices: int, port: int, profile_kb: int, no_hints: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--devices", str(devices), "--port", str(port),
             "--profile-kb", str(profile_kb)] + (["--no-hints"] if no_hints else []), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError("gateway process failed to start")

    def stats(self) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def stop(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


class InstructionCounter:
    """`perf stat -e instructions` attached to a running process, until stop()."""

    def __init__(self, pid: int) -> None:
        self.proc = subprocess.Popen(["perf", "stat", "-x", ",", "-e", "instructions", "-p", str(pid)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.2)  # attached before the phase starts

    def stop(self) -> int:
        import signal
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        for line in err.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2].startswith("instructions") and fields[0].isdigit():
                return int(fields[0])
        raise RuntimeError(f"perf stat gave no instruction count: {err.strip()[-300:]}")


def start_broker(directory: Path, devices: int) -> tuple[subprocess.Popen[bytes], int]:
    import getpass

    from gateway.links.mqtt import mqtt_password, write_acl_file, write_password_file
    registry = registry_for(devices)
    write_password_file(directory / "passwd", [(GATEWAY_USER, GATEWAY_PASSWORD)]
                        + [(d.identity, mqtt_password(d)) for d in registry])
    write_acl_file(directory / "acl", GATEWAY_USER, registry)
    port = free_tcp()
    (directory / "mosquitto.conf").write_text("\n".join([
        "per_listener_settings false", "allow_anonymous false", f"user {getpass.getuser()}",
        f"password_file {directory / 'passwd'}", f"acl_file {directory / 'acl'}", "persistence false",
        "log_dest none", "max_queued_messages 10000",
        # the gateway's one connection carries every device's exchange: no window on its QoS 1
        # messages (mosquitto's default of 20 in flight held a 1,000-device burst back by 0.1 s)
        "max_inflight_messages 0", f"listener {port} 127.0.0.1", ""]))
    proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(directory / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc, port
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


async def run_worker(args: argparse.Namespace) -> None:
    """One load-generator process: a link simulator and every K-th device's agent."""
    from gateway.links.simulator import LinkProfile, TcpLinkSimulator, UdpLinkSimulator
    from hil.agent import Agent

    rtt = args.rtt_ms / 1000
    profile = LinkProfile(rtt_s=rtt, bandwidth_bps=args.bandwidth_bps, loss=args.loss)
    loop = asyncio.get_running_loop()
    mine = list(range(args.worker, args.devices, args.workers))
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=min(256, len(mine) + 4)))
    sim: UdpLinkSimulator | TcpLinkSimulator
    if args.transport == "coap":
        sim = UdpLinkSimulator(("127.0.0.1", args.port), profile, seed=args.worker)
        await sim.start(max(1, len(mine) // 25))
    else:
        sim = TcpLinkSimulator(("127.0.0.1", args.port), profile)
        await sim.start()
    agents = []
    for i, n in enumerate(mine):
        eid = eid_of(n)
        transport: object
        if args.transport == "coap":
            from hil.agent.coap_transport import CoapAgentTransport
            assert isinstance(sim, UdpLinkSimulator)
            transport = CoapAgentTransport("127.0.0.1", sim.listen_ports[i % len(sim.listen_ports)], eid,
                                           identity=f"dev{n}", psk=psk_of(n), block_timeout=max(2.0, 4 * rtt),
                                           request_timeout=max(60.0, 40 * rtt))
        else:
            from gateway.links.mqtt import MqttConfig
            from hil.agent.mqtt_transport import MqttAgentTransport
            transport = MqttAgentTransport(MqttConfig("127.0.0.1", sim.listen_port, f"dev{n}", psk_of(n).decode(),
                                                      client_id=f"dev{n}", connect_timeout_s=max(30.0, 10 * rtt),
                                                      keepalive=600), eid, timeout=max(60.0, 40 * rtt))
        agents.append(Agent(Agent.make_status(eid, buffer_size=args.buffer_kb * 1024), BenchCard(),
                            transport))  # type: ignore[arg-type]
    try:
        t0 = time.time()
        attach = await asyncio.gather(*(a.run_session() for a in agents))
        print(json.dumps({"attached": True, "setup_s": time.time() - t0}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        start = time.time()
        reports = await asyncio.gather(*(a.run_session() for a in agents))
        end = time.time()
    finally:
        for a in agents:
            with contextlib.suppress(Exception):
                await a.transport.close()
        await sim.close()
    completed = sum(1 for r, a in zip(reports, attach)
                    if r.batches == 4 and r.results and r.results[-1].stopped == p.STOPPED_DATA
                    and r.transport_error is None and a.transport_error is None)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "start": start, "end": end, "completed": completed, "devices": len(agents),
        "cpu_s": usage.ru_utime + usage.ru_stime, "datagrams": sim.stats.datagrams, "dropped": sim.stats.dropped,
        "bytes_down": sim.stats.bytes_down, "bytes_up": sim.stats.bytes_up,
        "block_requests": sum(getattr(a.transport, "block_requests", 0) for a in agents),
        "speculative_requests": sum(getattr(a.transport, "speculative_requests", 0) for a in agents),
        "block_timeouts": sum(getattr(a.transport, "block_timeouts", 0) for a in agents),
        "exchange_s": [r.exchange_s for r in reports],
        "transport_errors": sorted({r.transport_error.split(":")[0] for r in reports if r.transport_error}),
    }), flush=True)


async def run_devices(args: argparse.Namespace) -> dict[str, object]:
    rtt = args.rtt_ms / 1000
    tmp = tempfile.TemporaryDirectory(prefix="ipae-bench-")
    broker = None
    if args.transport == "coap":
        port = free_udp_pair()
    else:
        broker, port = start_broker(Path(tmp.name), args.devices)
    gateway = GatewayProcess(args.transport, args.devices, port, args.profile_kb, args.no_hints)
    workers = []
    try:
        for w in range(args.workers):
            cmd = [sys.executable, __file__, "--worker", str(w), "--workers", str(args.workers),
                   "--transport", args.transport, "--devices", str(args.devices), "--port", str(port),
                   "--rtt-ms", str(args.rtt_ms), "--loss", str(args.loss), "--buffer-kb", str(args.buffer_kb)]
            if args.bandwidth_bps:
                cmd += ["--bandwidth-bps", str(args.bandwidth_bps)]
            workers.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        attached = [json.loads(w.stdout.readline()) for w in workers]  # type: ignore[union-attr]
        before = gateway.stats()
        counter = InstructionCounter(gateway.proc.pid) if args.count_instructions else None
        for w in workers:
            w.stdin.write("go\n")  # type: ignore[union-attr]
            w.stdin.flush()  # type: ignore[union-attr]
        results = [json.loads(w.stdout.readline()) for w in workers]  # type: ignore[union-attr]
        after = gateway.stats()
        instructions = counter.stop() if counter is not None else None
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                w.stdin.close()  # type: ignore[union-attr]
            try:
                w.wait(60)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
            if w.stdout:
                w.stdout.close()
        broker_cpu = _proc_stats(broker.pid)[0] if broker is not None else None
        gateway.stop()
        if broker is not None:
            broker.terminate()
            broker.wait()
        tmp.cleanup()
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    exchanges, link_bytes = floor_exchanges(args.profile_kb * 1024)
    floor = exchanges * rtt + (link_bytes * 8 / args.bandwidth_bps if args.bandwidth_bps else 0.0)
    per_device = [e for r in results for e in r["exchange_s"]]

    def stat(i: int, q: float) -> float:
        values = sorted(e[i] for e in per_device if len(e) > i)
        return round(values[min(len(values) - 1, int(q * len(values)))], 2) if values else 0.0

    completed = sum(r["completed"] for r in results)
    return {
        "transport": args.transport, "devices": args.devices, "rtt_ms": args.rtt_ms,
        "bandwidth_bps": args.bandwidth_bps, "loss": args.loss, "profile_kb": args.profile_kb,
        "wall_s": round(wall, 3), "floor_s": round(floor, 3), "ratio": round(wall / floor, 3),
        "setup_s": round(max(a["setup_s"] for a in attached), 3), "exchanges_per_device": exchanges,
        "completed": completed, "failed": args.devices - completed,
        "gateway_cpu_s": round(after["cpu_s"] - before["cpu_s"], 3),
        "gateway_cpu_total_s": round(after["cpu_s"], 3),
        "gateway_rss_mb": round(after["rss_mb"], 1),
        "gateway_instructions_per_device": None if instructions is None else round(instructions / args.devices),
        "broker_cpu_total_s": None if broker_cpu is None else round(broker_cpu, 3),
        "loadgen_workers": args.workers, "loadgen_cpu_s": round(sum(r["cpu_s"] for r in results), 3),
        "datagrams": sum(r["datagrams"] for r in results), "dropped": sum(r["dropped"] for r in results),
        "bytes_down": sum(r["bytes_down"] for r in results), "bytes_up": sum(r["bytes_up"] for r in results),
        "block_requests": sum(r["block_requests"] for r in results),
        "speculative_requests": sum(r["speculative_requests"] for r in results),
        "block_timeouts": sum(r["block_timeouts"] for r in results),
        "exchange_s_p50": [stat(i, 0.5) for i in range(exchanges)],
        "exchange_s_p95": [stat(i, 0.95) for i in range(exchanges)],
        "transport_errors": sorted({e for r in results for e in r["transport_errors"]}),
    }


# --- aiocoap DTLS server probe ---------------------------------------------------------------------


async def probe_dtls(args: argparse.Namespace) -> dict[str, object]:
    """Concurrent DTLS handshakes against aiocoap's tinydtls server, in this process."""
    import gc
    import tracemalloc

    from gateway.links.coap import CoapServer, CoapServerConfig
    from hil.agent import Agent
    from hil.agent.coap_transport import CoapAgentTransport

    import logging
    logging.basicConfig(level=logging.ERROR)
    handler = DownloadHandler(1024)
    port = free_udp_pair()
    server = CoapServer(handler, registry_for(args.devices), CoapServerConfig(dtls_port=port))
    await server.start()
    pool = server._contexts[0].request_interfaces[0].token_interface.message_interface._pool  # type: ignore[attr-defined]
    tracemalloc.start()
    gc.collect()
    mem0 = tracemalloc.get_traced_memory()[0]
    agents = [Agent(Agent.make_status(eid_of(n)), BenchCard(),
                    CoapAgentTransport("127.0.0.1", port, eid_of(n), identity=f"dev{n}", psk=psk_of(n),
                                       request_timeout=60))  # type: ignore[arg-type]
              for n in range(args.devices)]
    t0 = time.perf_counter()
    reports = await asyncio.gather(*(a.run_session() for a in agents))
    handshake_wall = time.perf_counter() - t0
    ok = sum(1 for r in reports if r.transport_error is None)
    sessions_open = len(pool._connections)
    gc.collect()
    mem1 = tracemalloc.get_traced_memory()[0]
    for a in agents:
        await a.transport.close()
    await asyncio.sleep(0.5)
    sessions_after_close = len(pool._connections)
    tracemalloc.stop()
    await server.close()
    return {"devices": args.devices, "handshakes_ok": ok, "wall_s": round(handshake_wall, 3),
            "handshakes_per_s": round(ok / handshake_wall, 1), "server_sessions_open": sessions_open,
            "server_sessions_after_clients_closed": sessions_after_close,
            "max_sockets_setting": type(pool).max_sockets,
            "traced_kib_per_session_both_sides": round((mem1 - mem0) / 1024 / max(1, ok), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transport", choices=("coap", "mqtt"), default="coap")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--rtt-ms", type=float, default=1500)
    ap.add_argument("--bandwidth-bps", type=float, default=None)
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--profile-kb", type=int, default=30)
    ap.add_argument("--buffer-kb", type=int, default=32, help="agent buffer (Block2 window = buffer / 1 KB)")
    ap.add_argument("--no-hints", action="store_true", help="the handler gives no next_size_hint")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--probe-dtls", action="store_true")
    ap.add_argument("--workers", type=int, default=2, help="load-generator processes")
    ap.add_argument("--count-instructions", action="store_true",
                    help="count the gateway's instructions in the download phase (perf stat): a figure that "
                         "other load on the machine does not change, unlike CPU seconds")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--serve", choices=("coap", "mqtt"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args))
        return 0
    if args.worker is not None:
        asyncio.run(run_worker(args))
        return 0
    result = asyncio.run(probe_dtls(args) if args.probe_dtls else run_devices(args))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>28}: {v}")
    return 0 if result.get("failed", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
