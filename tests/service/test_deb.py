"""The .deb: built by packaging/build-deb.sh (dh-virtualenv), lintian-clean, installed with
dpkg, usable from the installed files, and purged without leaving files behind.

Installs into this machine's root file system, so it runs only as root, and refuses to touch
an ipae-gateway package that was already installed.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service_support import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a .deb with dpkg: needs root"),
    pytest.mark.skipif(shutil.which("dpkg-buildpackage") is None or shutil.which("dh_virtualenv") is None,
                       reason="dpkg-buildpackage / dh-virtualenv not installed (make system-packages)"),
]

PACKAGE = "ipae-gateway"
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
    import tomllib

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


def test_installed_daemon_serves_devices_against_the_peers(installed: Path, tmp_path: Path) -> None:
    """The installed code (not the work tree: run from elsewhere, its own interpreter) runs the
    demo: the daemon with CoAP/DTLS and MQTT links, the eIM and SM-DP+ peers, device agents."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run(["/usr/bin/ipae-gateway", "demo", "--help"], capture_output=True, text=True, cwd=tmp_path,
                           env=env, timeout=60)
    assert where.returncode == 0, where.stderr
    origin = subprocess.run(["/usr/lib/ipae-gateway/bin/python", "-c", "import gateway; print(gateway.__file__)"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert origin.stdout.startswith("/usr/lib/ipae-gateway/"), origin.stdout + origin.stderr
    run = subprocess.run(["/usr/bin/ipae-gateway", "demo", "--devices", "2", "--json", "--timeout", "120"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["devices"] == 2
    assert summary["operations_succeeded"] == summary["operations_ordered"] == 8


def test_purge_leaves_nothing_behind(installed: Path) -> None:
    (Path("/var/lib/ipae-gateway") / "gateway.sqlite3").write_bytes(b"state written by the daemon")
    _run("dpkg", "--purge", PACKAGE, timeout=300)
    assert not _installed()
    assert [p for p in LEFT_BEHIND if p.exists() or p.is_symlink()] == []
    assert _run("dpkg-query", "-W", PACKAGE, check=False).returncode != 0
