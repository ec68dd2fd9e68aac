"""The protocol core (gateway.spec, gateway.core) must import and run without any I/O library."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = ["asyncio", "aiocoap", "aiohttp", "paho", "sqlite3", "sqlite_utils", "serial", "socket"]


def test_spec_and_core_import_with_io_libraries_blocked() -> None:
    code = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ImportError("blocked in the pure core: " + name)
                return None
        sys.meta_path.insert(0, Block())
        import gateway.spec, gateway.core
        for pkg in (gateway.spec, gateway.core):
            for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                if mod.name.endswith("_cli"):
                    continue
                importlib.import_module(mod.name)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
