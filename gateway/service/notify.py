"""Readiness, status and watchdog messages to systemd (Type=notify, WatchdogSec=).

systemd passes NOTIFY_SOCKET to a Type=notify service; `sd_notify(3)` (systemd.daemon.notify)
sends datagrams such as "READY=1" to it. The supervisor says READY once links, store and
backhaul are up, STATUS whenever the picture changes (shown by `systemctl status`), WATCHDOG
every half WatchdogSec from the loop that does the work (so a hung loop gets the service
restarted), RELOADING on SIGHUP and STOPPING when draining starts. Without NOTIFY_SOCKET (a
terminal, a test, the daemon started by hand) every call is a no-op returning False.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from systemd.daemon import notify as sd_notify


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._watchdog_s = _watchdog_interval(env)

    def _send(self, *lines: str) -> bool:
        if not self.enabled:
            return False
        return bool(sd_notify("\n".join(lines)))

    def ready(self, status: str | None = None) -> bool:
        return self._send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self._send("WATCHDOG=1")

    def reloading(self) -> bool:
        monotonic_us = time.monotonic_ns() // 1000  # CLOCK_MONOTONIC on Linux, as systemd expects
        return self._send("RELOADING=1", f"MONOTONIC_USEC={monotonic_us}")

    def stopping(self, status: str | None = None) -> bool:
        return self._send("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to call `watchdog()`: half of WatchdogSec, or None when no watchdog is set."""
        return self._watchdog_s


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


def _one_line(text: str) -> str:
    return " ".join(text.split())
