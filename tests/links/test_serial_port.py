"""AtPort over a real pseudo-terminal (os.openpty) with a scripted modem: every reply and URC, in order."""

from __future__ import annotations

import os
import select
import threading
import tty
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings, strategies as st

from gateway.links.serial import at
from gateway.links.serial.at import cgla
from gateway.links.serial.errors import ModemTimeout
from gateway.links.serial.port import AtPort

_URC = st.sampled_from(["+CEREG: 1,5", "RING", '+QIND: "csq",20,99', "RDY", "+CPIN: READY", "SMS DONE"])


@contextmanager
def scripted_modem(replies: list[bytes], chunk: int) -> Iterator[str]:
    """A pty whose far end answers the n-th command line (ended by CR) with replies[n]."""
    master, slave = os.openpty()
    tty.setraw(slave)
    stop = threading.Event()

    def serve() -> None:
        pending, answered = b"", 0
        while not stop.is_set() and answered < len(replies):
            if not select.select([master], [], [], 0.02)[0]:
                continue
            pending += os.read(master, 4096)
            while b"\r" in pending and answered < len(replies):
                _, pending = pending.split(b"\r", 1)
                data = replies[answered]
                answered += 1
                for i in range(0, len(data), chunk):
                    os.write(master, data[i:i + chunk])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield os.ttyname(slave)
    finally:
        stop.set()
        thread.join(5)
        os.close(master)
        os.close(slave)


@settings(max_examples=40, deadline=None)
@given(exchanges=st.lists(st.tuples(st.binary(min_size=2, max_size=40), st.booleans(), st.lists(_URC, max_size=2),
                                    st.lists(_URC, max_size=2), st.lists(_URC, max_size=2)), min_size=1, max_size=4),
       chunk=st.integers(1, 50))
def test_every_reply_and_urc_arrives_in_order_whatever_the_chunking(
        exchanges: list[tuple[bytes, bool, list[str], list[str], list[str]]], chunk: int) -> None:
    replies, commands, expected_urcs = [], [], []
    for response, echo, before, inside, after in exchanges:
        command = cgla(1, bytes.fromhex("81E2910003BF2000"))
        lines = ([command] if echo else []) + before + [f'+CGLA: {2 * len(response)},"{response.hex().upper()}"'] \
            + inside + ["OK"] + after
        replies.append(b"\r\n".join(line.encode() for line in lines) + b"\r\n")
        commands.append((command, response))
        expected_urcs += before + inside + after
    replies.append(b"\r\nOK\r\n")
    with scripted_modem(replies, chunk) as device, AtPort.open(device, timeout_s=3.0) as port:
        for command, response in commands:
            assert at.parse_hex_response(port.command(command, "+CGLA"), "+CGLA") == response
        port.command("AT")
        assert list(port.urcs) == expected_urcs


def test_a_silent_modem_times_out_and_the_next_command_resynchronises_first() -> None:
    replies = [b"", b"\r\n+CGLA: 4,\"9000\"\r\n\r\nOK\r\n\r\n+CFUN: 1\r\n\r\nOK\r\n", b"\r\nOK\r\n"]
    with scripted_modem(replies, 64) as device, AtPort.open(device, timeout_s=0.3) as port:
        with pytest.raises(ModemTimeout):
            port.command(cgla(1, bytes.fromhex("81E2910003BF2000")), "+CGLA")
        reply = port.command("ATI")  # the late +CGLA answer and the resync answer arrive first
        assert reply.info == ()
        assert '+CGLA: 4,"9000"' in port.urcs
