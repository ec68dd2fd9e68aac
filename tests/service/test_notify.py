"""systemd notifications through sd_notify(3), received on a real unix datagram socket."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.service.notify import Notifier


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # A short directory: unix socket paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="ipae-") as d:
        path = str(Path(d) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        try:
            yield sock
        finally:
            sock.close()


def _received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_status_watchdog_stopping_reach_the_socket(notify_socket: socket.socket) -> None:
    n = Notifier()
    assert n.enabled
    assert n.ready("3 devices, eIM reachable")
    assert _received(notify_socket) == "READY=1\nSTATUS=3 devices, eIM reachable"
    assert n.status("backhaul down\nsince 10 s")
    assert _received(notify_socket) == "STATUS=backhaul down since 10 s"
    assert n.watchdog()
    assert _received(notify_socket) == "WATCHDOG=1"
    assert n.reloading()
    lines = _received(notify_socket).split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert n.stopping("draining 2 sessions")
    assert _received(notify_socket) == "STOPPING=1\nSTATUS=draining 2 sessions"


def test_every_call_is_a_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert not any([n.ready(), n.status("x"), n.watchdog(), n.reloading(), n.stopping()])


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process() -> None:
    me = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}).watchdog_interval_s == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval_s == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert Notifier({}).watchdog_interval_s is None
