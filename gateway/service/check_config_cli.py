"""`ipae-gateway check-config`: load and validate the configuration without starting anything.

Prints OK and a summary (never a secret) and exits 0, or prints the error naming the file and
the key and exits 2, so a deployment script or `ExecReload=` can refuse a bad change.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from gateway.config import DEFAULT_CONFIG, Config, load_config
from gateway.errors import ConfigError

EXIT_INVALID = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="PATH",
                        help=f"gateway.toml to check (default: {DEFAULT_CONFIG}); its gateway.d/ drop-ins too")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print("OK")
    print(summary(config))
    return 0


def summary(config: Config) -> str:
    links = config.links
    enabled = []
    if links.coap.enabled:
        scheme = "coaps" if links.coap.dtls else "coap (plain, lab)"
        enabled.append(f"{scheme} on [{links.coap.listen}]:{links.coap.port}")
    if links.mqtt.enabled:
        scheme = "mqtts" if links.mqtt.tls else "mqtt (plain, lab)"
        enabled.append(f"{scheme} broker {links.mqtt.broker_host}:{links.mqtt.broker_port}")
    if links.serial.enabled:
        enabled.append(f"serial {', '.join(links.serial.ports)}")
    nb = config.northbound
    eim = f"{nb.eim_fqdn}:{nb.eim_port}" if nb.eim_fqdn else "none (eIM configuration of each eUICC)"
    inject = f"[{nb.inject.listen}]:{nb.inject.port}" if nb.inject.listen else "off"
    api = str(config.api.socket_path)
    if config.api.tcp_listen:
        api += f", tcp [{config.api.tcp_listen}]:{config.api.tcp_port} (bearer token)"
    per_link = Counter(d.link for d in config.devices)
    fleet = ", ".join(f"{n} {link}" for link, n in sorted(per_link.items())) or "none"
    creds = config.credentials
    lines = [
        f"files:       {', '.join(str(p) for p in config.sources)}",
        f"gateway id:  {config.gateway_id}",
        f"state:       {config.gateway.state_dir} (database {config.store.db_path})",
        f"eIM:         {eim}; ESipa {nb.esipa_binding}; inject {inject}",
        f"links:       {'; '.join(enabled) or 'none enabled'}",
        f"api:         {api}",
        f"devices:     {len(config.devices)} ({fleet})",
        f"credentials: {len(creds.dtls_psk)} DTLS PSKs"
        f"{', MQTT password' if creds.mqtt.password else ''}{', API token' if creds.api.bearer_token else ''}",
    ]
    return "\n".join(lines)
