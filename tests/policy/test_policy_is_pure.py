"""The pure policy modules import and run without any I/O library (DESIGN principle 1)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = ["asyncio", "aiocoap", "aiohttp", "paho", "sqlite3", "sqlite_utils", "serial", "socket"]
PURE = ["decisions", "plmn", "groups", "fallback", "imei", "roaming", "events", "alarms", "policies"]


def test_pure_policy_modules_import_with_io_libraries_blocked() -> None:
    code = textwrap.dedent(
        f"""
        import importlib, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ImportError("blocked in the pure policies: " + name)
                return None
        sys.meta_path.insert(0, Block())
        import gateway.policy
        for name in {PURE!r}:
            importlib.import_module("gateway.policy." + name)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
