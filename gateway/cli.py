"""`ipae-gateway` command line: one sub-command per module, imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# sub-command -> (module, help). Each module offers `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "decode": ("gateway.spec.decode_cli", "decode a captured APDU payload or ESipa/ES9+ body to JSON"),
    "check-config": ("gateway.service.check_config_cli", "validate the configuration without starting (exit 2 if invalid)"),
    "run": ("gateway.service.run_cli", "run the gateway daemon in the foreground (systemd Type=notify)"),
    "status": ("gateway.service.admin_cli", "show the running gateway's state (over the management API)"),
    "devices": ("gateway.service.admin_cli", "list the devices and their session state"),
    "device": ("gateway.service.admin_cli", "show one device (EID), or post an operator action to it"),
    "queue": ("gateway.service.admin_cli", "show the inbox and outbox queues and the backhaul circuits"),
    "audit": ("gateway.service.admin_cli", "query or export (--jsonl) the audit log"),
    "metrics": ("gateway.service.admin_cli", "print the Prometheus metrics"),
    "group": ("gateway.service.admin_cli", "run retry|reread-eim|quarantine|release on a device group, or show its audit"),
    "demo": ("gateway.service.demo", "run eIM, SM-DP+, mosquitto, the gateway and N device agents on loopback"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, the arguments of that one sub-command are loaded (the others
    are listed by name and help alone, so a slow or broken module cannot break other commands)."""
    parser = argparse.ArgumentParser(prog="ipae-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == only:
            _load(module, "add_arguments")(p)
    return parser


def _load(module: str, attr: str) -> Callable[..., object]:
    fn = getattr(importlib.import_module(module), attr)
    assert callable(fn)
    return fn  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(chosen).parse_args(argv)
    result = _load(args._module, "run")(args)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
