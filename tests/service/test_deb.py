"""The .deb: built by packaging/build-deb.sh (dh-virtualenv), lintian-clean, installed with
dpkg, usable from the installed files, its daemon run as the installed unit runs it (as the
service user, started by hand: no systemd PID 1 here, see InstalledService) serving devices
against the test peers, and purged without leaving files behind.

Installs into this machine's root file system, so it runs only as root, and refuses to touch
an ipae-gateway package that was already installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import grp
import io
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon_support import Daemon, api_request, spawn, stop_daemon
from gateway.service import demo
from gateway.service.api import AUDIT_MAX_LIMIT
from service_support import REPO, unit_settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a .deb with dpkg: needs root"),
    pytest.mark.skipif(shutil.which("dpkg-buildpackage") is None or shutil.which("dh_virtualenv") is None,
                       reason="dpkg-buildpackage / dh-virtualenv not installed (make system-packages)"),
]

PACKAGE = "ipae-gateway"
ETC = Path("/etc/ipae-gateway")
CREDENTIALS = ETC / "credentials.toml"
TEST_DROPIN = ETC / "gateway.d" / "99-test.toml"
TEST_FLEET = ETC / "devices.d" / "99-test.toml"
TEST_CERTIFICATES = ETC / "test-certificates"
INSTALLED_UNIT = Path("/lib/systemd/system/ipae-gateway.service")
LEFT_BEHIND = [Path("/etc/ipae-gateway"), Path("/var/lib/ipae-gateway"), Path("/usr/lib/ipae-gateway"),
               Path("/usr/bin/ipae-gateway"), Path("/lib/systemd/system/ipae-gateway.service"),
               Path("/run/ipae-gateway"), Path("/usr/share/doc/ipae-gateway")]


def _run(*cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def _installed() -> bool:
    r = _run("dpkg-query", "-W", "-f=${db:Status-Status}", PACKAGE, check=False)
    return r.returncode == 0 and r.stdout.strip() not in ("", "not-installed", "config-files")


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    start = time.monotonic()
    result = _run(str(REPO / "packaging" / "build-deb.sh"), str(out), timeout=800)
    elapsed = time.monotonic() - start
    print(f"\n.deb built in {elapsed:.0f} s; lintian:\n{(out / 'lintian.txt').read_text()}")
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.name.startswith(f"{PACKAGE}_") and path.suffix == ".deb"
    return path


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Path]:
    # Two test runs on one machine take turns: the package is a machine-wide resource.
    with open(Path(tempfile.gettempdir()) / "ipae-gateway-deb-test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed():
            pytest.skip("ipae-gateway is already installed on this machine: not touching it")
        try:
            _run("dpkg", "-i", str(deb), timeout=300)
            assert _installed()
            yield deb
        finally:
            _run("dpkg", "--purge", PACKAGE, check=False, timeout=300)


def test_deb_file_name_has_version_and_architecture(deb: Path) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    arch = _run("dpkg", "--print-architecture").stdout.strip()
    assert deb.name == f"{PACKAGE}_{version}_{arch}.deb"


def test_lintian_reports_no_errors(deb: Path) -> None:
    report = (deb.parent / "lintian.txt").read_text()
    assert not [line for line in report.splitlines() if line.startswith("E: ")], report


def test_package_declares_config_as_conffile_and_ships_unit_and_examples(deb: Path) -> None:
    conffiles = _run("dpkg-deb", "-f", str(deb), "Conffiles", check=False).stdout
    listing = _run("dpkg-deb", "-c", str(deb)).stdout
    control = _run("dpkg-deb", "-I", str(deb), "conffiles").stdout
    assert "/etc/ipae-gateway/gateway.toml" in control + conffiles
    for path in ("./lib/systemd/system/ipae-gateway.service", "./usr/bin/ipae-gateway",
                 "./usr/share/doc/ipae-gateway/examples/credentials.toml.example",
                 "./usr/share/doc/ipae-gateway/examples/devices.d/example.toml",
                 "./usr/share/doc/ipae-gateway/operations.md"):
        assert path in listing
    assert "credentials.toml " not in listing  # created private by postinst, never shipped
    assert "__pycache__" not in listing


def test_install_creates_user_directories_and_private_credentials(installed: Path) -> None:
    user = pwd.getpwnam("ipae-gateway")
    assert user.pw_shell.endswith("nologin")
    assert "ipae-gateway" in grp.getgrnam("dialout").gr_mem
    state = os.stat("/var/lib/ipae-gateway")
    assert (state.st_uid, stat.S_IMODE(state.st_mode)) == (user.pw_uid, 0o750)
    creds = os.stat("/etc/ipae-gateway/credentials.toml")
    assert stat.S_IMODE(creds.st_mode) == 0o640
    assert (creds.st_uid, creds.st_gid) == (0, grp.getgrnam("ipae-gateway").gr_gid)
    assert Path("/etc/ipae-gateway/gateway.d").is_dir() and Path("/etc/ipae-gateway/devices.d").is_dir()


def test_installed_unit_verifies_with_its_binary_and_man_page(installed: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    result = _run("systemd-analyze", "verify", "/lib/systemd/system/ipae-gateway.service", check=False)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_installed_cli_runs_help_and_check_config(installed: Path) -> None:
    assert shutil.which("ipae-gateway") == "/usr/bin/ipae-gateway"
    help_text = _run("ipae-gateway", "--help").stdout
    assert "check-config" in help_text
    ok = _run("ipae-gateway", "check-config")
    assert ok.stdout.startswith("OK\n") and "/etc/ipae-gateway/gateway.toml" in ok.stdout
    # As the service user: the credentials file is readable through the group only.
    as_service = _run("runuser", "-u", "ipae-gateway", "--", "ipae-gateway", "check-config")
    assert as_service.stdout.startswith("OK\n")


def test_installed_check_config_refuses_bad_dropin_with_file_and_key(installed: Path) -> None:
    dropin = Path("/etc/ipae-gateway/gateway.d/99-test.toml")
    dropin.write_text("[links.coap]\nport = 0\n")
    try:
        bad = _run("ipae-gateway", "check-config", check=False)
    finally:
        dropin.unlink()
    assert bad.returncode == 2
    assert f"{dropin}:links.coap.port: expected" in bad.stderr


class InstalledService:
    """The installed unit's ExecStartPre and ExecStart, run as systemd runs them.

    There is no systemd PID 1 on the test machines (containers), so this does by hand what
    systemd does for the unit, reading every setting from the installed unit file: creates
    its StateDirectory and RuntimeDirectory with the unit's owner and modes; runs ExecStartPre,
    then ExecStart as the main process, both as User/Group/SupplementaryGroups through setpriv
    with NoNewPrivileges and the empty capability bounding set, the unit's UMask, working
    directory / and the environment systemd gives a service (PATH, USER, LOGNAME, HOME, SHELL,
    INVOCATION_ID, NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, the *_DIRECTORY variables);
    waits for READY=1 from the main process itself (NotifyAccess=main); on stop sends SIGTERM,
    waits TimeoutStopSec and removes the RuntimeDirectory. Not applied: the namespace and
    seccomp sandbox (ProtectSystem=, PrivateTmp=, SystemCallFilter=, ...), which needs systemd
    itself (test_systemd_unit scores it offline), and the journal (stderr is a pipe here).

    The test's configuration is the installed gateway.toml plus a drop-in, a fleet file and the
    credentials the demo's peers and devices need, written where an operator writes them; the
    certificates the daemon reads are copied under /etc/ipae-gateway. All are removed at stop.
    """

    def __init__(self, unit: Path, notify_dir: Path) -> None:
        self.unit = unit_settings(unit)
        self.notify_dir = notify_dir
        self.user = pwd.getpwnam(self.one("User"))
        self.state_dir = Path("/var/lib") / self.one("StateDirectory")
        self.runtime_dir = Path("/run") / self.one("RuntimeDirectory")
        self.daemon: Daemon | None = None
        self.exit_code: int | None = None
        self.start_pre: subprocess.CompletedProcess[str] | None = None

    def one(self, key: str) -> str:
        values = self.unit[key]
        assert len(values) == 1, f"{key}= is set {len(values)} times in the unit"
        return values[0]

    def seconds(self, key: str) -> float:
        value = self.one(key)
        assert value.endswith("s") and value[:-1].isdigit(), f"{key}={value}: expected whole seconds"
        return float(value[:-1])

    def command(self, line: str) -> list[str]:
        """An Exec line as the service user: its argv behind setpriv, WATCHDOG_PID set to the
        pid the command runs as (sh execs setpriv, which execs the command)."""
        argv = shlex.split(line)
        assert argv[0].startswith("/"), f"Exec line with a prefix this runner does not handle: {line}"
        privileges = [f"--reuid={self.user.pw_name}", f"--regid={self.one('Group')}",
                      f"--groups={','.join(self.unit.get('SupplementaryGroups', []))}"]
        if self.one("NoNewPrivileges") == "yes":
            privileges.append("--no-new-privs")
        if self.one("CapabilityBoundingSet") == "" and self.one("AmbientCapabilities") == "":
            privileges += ["--bounding-set=-all", "--inh-caps=-all"]
        return ["/bin/sh", "-c", 'WATCHDOG_PID=$$ SYSTEMD_EXEC_PID=$$ exec "$@"', "sh",
                "setpriv", *privileges, "--", *argv]

    def environment(self) -> dict[str, str]:
        return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "USER": self.user.pw_name, "LOGNAME": self.user.pw_name, "HOME": self.user.pw_dir,
                "SHELL": self.user.pw_shell, "INVOCATION_ID": os.urandom(16).hex(),
                "WATCHDOG_USEC": str(int(self.seconds("WatchdogSec") * 1_000_000)),
                "STATE_DIRECTORY": str(self.state_dir), "RUNTIME_DIRECTORY": str(self.runtime_dir),
                "CONFIGURATION_DIRECTORY": str(ETC)}

    def _directories(self) -> None:
        for path, mode in ((self.state_dir, self.one("StateDirectoryMode")),
                           (self.runtime_dir, self.one("RuntimeDirectoryMode"))):
            path.mkdir(exist_ok=True)
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
            os.chmod(path, int(mode, 8))

    def _write_configuration(self, settings: demo.GatewaySettings) -> None:
        TEST_CERTIFICATES.mkdir()
        copies = {}
        for name in ("ca_file", "eim_certificate_file", "eim_tls_trust_file"):
            source = getattr(settings, name)
            if source is not None:
                copies[name] = TEST_CERTIFICATES / f"{name}{source.suffix}"
                shutil.copyfile(source, copies[name])
                os.chmod(copies[name], 0o644)
        settings = dataclasses.replace(settings, **copies)
        TEST_DROPIN.write_text(settings.config_toml(state_dir=None))   # the installed state_dir and API socket
        TEST_FLEET.write_text(settings.fleet_toml())
        CREDENTIALS.write_text(settings.credentials_toml())            # keeps postinst's root:ipae-gateway 0640

    @contextlib.asynccontextmanager
    async def start(self, directory: Path, settings: demo.GatewaySettings) -> AsyncIterator[demo.RunningGateway]:
        """A demo.GatewayStarter: the service up until the demo is done with it."""
        assert self.one("Type") == "notify" and self.one("NotifyAccess") == "main"
        installed_credentials = CREDENTIALS.read_text()
        popen: dict[str, Any] = {"cwd": "/", "umask": int(self.one("UMask"), 8), "env": self.environment()}
        try:
            self._write_configuration(settings)
            self._directories()
            (pre,) = self.unit["ExecStartPre"]
            self.start_pre = await asyncio.to_thread(subprocess.run, self.command(pre), capture_output=True,
                                                     text=True, timeout=60, **popen)
            assert self.start_pre.returncode == 0, self.start_pre.stdout + self.start_pre.stderr
            socket_path = Path(tomllib.loads((ETC / "gateway.toml").read_text())["api"]["socket_path"])
            self.daemon = spawn(self.command(self.one("ExecStart")), socket_path, self.notify_dir / "notify",
                                popen.pop("env"), notify_owner=self.user.pw_uid, **popen)
            await asyncio.to_thread(self.daemon.wait_notify, "READY=1", self.seconds("TimeoutStartSec"))
            assert socket_path.is_socket()
            yield _ServiceApi(socket_path)
        finally:
            if self.daemon is not None:
                self.exit_code = await asyncio.to_thread(stop_daemon, self.daemon, self.seconds("TimeoutStopSec"))
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            shutil.rmtree(TEST_CERTIFICATES, ignore_errors=True)
            TEST_DROPIN.unlink(missing_ok=True)
            TEST_FLEET.unlink(missing_ok=True)
            CREDENTIALS.write_text(installed_credentials)


class _ServiceApi:
    """The demo's view of the service: its audit log over the management API's unix socket."""

    def __init__(self, socket_path: Path) -> None:
        self.api_socket = socket_path

    async def audit_records(self) -> list[dict[str, Any]]:
        status, body = await api_request(self.api_socket, "GET", "/v1/audit", {"limit": str(AUDIT_MAX_LIMIT)})
        assert status == 200, body
        records: list[dict[str, Any]] = body["records"]
        return records

    async def round_trips(self) -> int:
        status, text = await api_request(self.api_socket, "GET", "/metrics")
        assert status == 200, text
        return int(sum(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith("ipae_gateway_round_trips_total")))


def test_installed_code_is_what_runs_outside_the_work_tree(installed: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    origin = subprocess.run(["/usr/lib/ipae-gateway/bin/python", "-c", "import gateway; print(gateway.__file__)"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert origin.stdout.startswith("/usr/lib/ipae-gateway/"), origin.stdout + origin.stderr


def test_installed_service_serves_devices_as_its_user_and_stops_cleanly_on_sigterm(installed: Path) -> None:
    """The installed daemon, started as its unit starts it (see InstalledService), serves the
    demo's devices (CoAP/DTLS and MQTT agents with software eUICCs, in this process) against
    the eIM and SM-DP+ peers: download, enable, list, delete on each. It writes only in its
    state directory (and its runtime directory, removed at stop), and exits 0 on SIGTERM."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        notify_dir = Path(tempfile.mkdtemp(prefix="ipae-notify-"))
        stack.callback(shutil.rmtree, notify_dir, ignore_errors=True)
        os.chmod(notify_dir, 0o755)
        workdir = Path(tempfile.mkdtemp(prefix="ipae-deb-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        service = InstalledService(INSTALLED_UNIT, notify_dir)
        progress = io.StringIO()
        summary = asyncio.run(demo.run_demo(2, out=progress, timeout_s=120, wake_s=0.3, workdir=workdir,
                                            start_gateway=service.start))
    seconds = time.monotonic() - started
    print(f"\ninstalled service served {summary.devices} devices in {seconds:.0f} s")
    assert service.daemon is not None
    daemon_log = service.daemon.stderr()
    assert summary.ok, f"{summary.to_json()}\n{progress.getvalue()}\ndaemon:\n{daemon_log[-3000:]}"
    assert summary.operations_succeeded == 8 and summary.webhook_events == 8
    assert summary.round_trips >= 8   # the larger of the daemon's /metrics count and the agents'
    # systemd would take READY=1 only from the main process (NotifyAccess=main): the ExecStart
    # command itself, running as the service user
    ready = next(i for i, m in enumerate(service.daemon.messages) if "READY=1" in m)
    assert service.daemon.senders[ready] == (service.daemon.process.pid, service.user.pw_uid)
    assert any("STOPPING=1" in m for m in service.daemon.messages), service.daemon.messages
    assert service.exit_code == 0, daemon_log[-3000:]
    # every file system a service could write to (where /tmp or /run are mounts of their own too)
    owned = set(_run("find", "/", "/tmp", "/var/tmp", "/run", "/dev/shm", "-xdev", "-path", "/proc", "-prune",
                     "-o", "-user", service.user.pw_name, "-print", check=False).stdout.split())
    database = service.state_dir / "gateway.sqlite3"
    assert str(database) in owned and database.stat().st_size > 0
    assert sorted(p for p in owned if not Path(p).is_relative_to(service.state_dir)) == []
    umask = int(service.one("UMask"), 8)
    assert [p for p in service.state_dir.rglob("*") if stat.S_IMODE(p.stat().st_mode) & umask] == []


def test_purge_leaves_nothing_behind(installed: Path) -> None:
    (Path("/var/lib/ipae-gateway") / "gateway.sqlite3").write_bytes(b"state written by the daemon")
    _run("dpkg", "--purge", PACKAGE, timeout=300)
    assert not _installed()
    assert [p for p in LEFT_BEHIND if p.exists() or p.is_symlink()] == []
    assert _run("dpkg-query", "-W", PACKAGE, check=False).returncode != 0
