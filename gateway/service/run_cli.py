"""`ipae-gateway run`: the daemon in the foreground (systemd Type=notify runs it this way)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from gateway.config import DEFAULT_CONFIG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="PATH",
                        help=f"gateway.toml (default: {DEFAULT_CONFIG}); its gateway.d/ drop-ins too")


def run(args: argparse.Namespace) -> int:
    from gateway.service.supervisor import Daemon

    return asyncio.run(Daemon(args.config).run())
