"""`ipae-gateway status|devices|device EID|queue|audit|metrics|group`: the operator's view, over the API.

Each command is one request to the management API's unix socket (or its TCP listener with
`--url` and a bearer token from `--token-file`), printed as a table for people or, with
`--json`, as the API's JSON unchanged. `audit --jsonl` streams the JSON-lines export;
`metrics` prints the Prometheus text. `device EID --action retry|cancel|forget|reread-eim|poll`
posts an operator action. `group NAME retry|reread-eim|quarantine|release` runs an operation
on every member of a `[policies.groups]` group (progress as JSON lines with `--json`, else
a summary and the members that failed); `group NAME audit` shows the members' audit records.
Exit codes: 0 done, 1 the API refused, 3 the daemon is unreachable, 4 a group operation
failed on some members.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config import DEFAULT_CONFIG, load_config
from gateway.errors import ConfigError
from gateway.service.api import GROUP_OPERATIONS

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3
EXIT_PARTIAL = 4
DEFAULT_SOCKET = Path("/run/ipae-gateway/api.sock")
ACTIONS = ("retry", "cancel", "forget", "reread-eim", "poll", "quarantine", "release")
GROUP_COMMANDS = (*GROUP_OPERATIONS, "audit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    command = parser.prog.split()[-1]
    parser.add_argument("--socket", type=Path, metavar="PATH",
                        help="API unix socket (default: api.socket_path of --config, else "
                             f"{DEFAULT_SOCKET})")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="PATH",
                        help="gateway.toml to read the socket path from")
    parser.add_argument("--url", metavar="URL", help="the API over TCP instead, e.g. http://gw:8080")
    parser.add_argument("--token-file", type=Path, metavar="PATH", help="file holding the bearer token for --url")
    if command != "metrics":
        parser.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    if command == "device":
        parser.add_argument("eid", help="the device's EID (32 digits)")
        parser.add_argument("--action", choices=ACTIONS, help="post this operator action to the device")
        parser.add_argument("--reason", help="why (with --action quarantine)")
    if command == "group":
        parser.add_argument("group", help="the group's name ([policies.groups.NAME] of gateway.toml)")
        parser.add_argument("operation", choices=GROUP_COMMANDS,
                            help="run this on every member (retry: their failed work), or show their audit records")
        parser.add_argument("--reason", help="why (with quarantine)")
        parser.add_argument("--forget-imei", action="store_true",
                            help="with release: the next IMEI each member reports becomes its binding")
        parser.add_argument("--since", type=float, help="with audit: from this time (epoch seconds)")
        parser.add_argument("--until", type=float, help="with audit: before this time (epoch seconds)")
    if command == "audit":
        parser.add_argument("--eid", help="only this device")
        parser.add_argument("--operation", help="only this operation (e.g. EnableProfile)")
        parser.add_argument("--since", type=float, help="from this time (epoch seconds)")
        parser.add_argument("--until", type=float, help="before this time (epoch seconds)")
        parser.add_argument("--limit", type=int, default=100, help="the last N records (default 100)")
        parser.add_argument("--jsonl", action="store_true", help="export every matching record as JSON lines")


class ApiFailure(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _socket(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        return Path(args.socket)
    try:
        return load_config(args.config).api.socket_path
    except (ConfigError, OSError):   # no readable configuration here: the packaged default
        return DEFAULT_SOCKET


async def call(args: argparse.Namespace, method: str, path: str, params: dict[str, str] | None = None,
               json_body: dict[str, Any] | None = None) -> bytes:
    headers: dict[str, str] = {}
    if args.url:
        connector: aiohttp.BaseConnector = aiohttp.TCPConnector()
        base = args.url.rstrip("/")
        if args.token_file is not None:
            headers["Authorization"] = f"Bearer {args.token_file.read_text().strip()}"
    else:
        socket = _socket(args)
        connector = aiohttp.UnixConnector(path=str(socket))
        base = "http://ipae-gateway"
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.request(method, base + path, params=params, headers=headers, json=json_body) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    try:
                        text = json.loads(body)["error"]
                    except (ValueError, KeyError, TypeError):
                        text = body.decode(errors="replace").strip()
                    raise ApiFailure(f"{resp.status}: {text}", EXIT_REFUSED)
                return body
    except aiohttp.ClientError as exc:
        where = args.url or str(_socket(args))
        raise ApiFailure(f"cannot reach the gateway API at {where}: {exc}", EXIT_UNREACHABLE) from None


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def show_status(data: dict[str, Any]) -> str:
    store = data.get("store", {})
    links = ", ".join(f"{k} {v}" for k, v in data.get("links", {}).items()) or "none"
    backhaul = ", ".join(f"{k} {v}" for k, v in data.get("backhaul", {}).items()) or "no request yet"
    counters = data.get("counters", {})
    return "\n".join([
        f"gateway:   {data.get('gateway_id')} ({data.get('status')}, up {data.get('uptime_s', 0):.0f} s, "
        f"{data.get('reloads', 0)} reloads)",
        f"links:     {links}",
        f"backhaul:  {backhaul}",
        f"devices:   {data.get('devices')} configured, {data.get('engine_sessions')} sessions, "
        f"{data.get('pending_exchanges')} exchanges pending",
        f"queues:    inbox {store.get('inbox_open', 0)}, outbox {store.get('outbox_pending', 0)} "
        f"({store.get('outbox_pending_bytes', 0)} bytes){_outbox_level(data.get('outbox', {}))}",
        f"traffic:   {counters.get('round_trips', 0):g} round trips, {counters.get('apdus', 0):g} APDUs, "
        f"{counters.get('errors', 0):g} errors",
        f"store:     {store.get('db_bytes', 0)} bytes, last audit id {store.get('audit_last_id', 0)}",
    ])


def _outbox_level(outbox: dict[str, Any]) -> str:
    level = outbox.get("level", "ok")
    if level == "ok":
        return ""
    held = ", new work refused" if outbox.get("holding_new_work") else ""
    return f" -- {level.upper()} (at most {outbox.get('max_entries')} messages{held})"


def show_devices(data: dict[str, Any]) -> str:
    rows = [(d["eid"], d.get("name"), d.get("link"), d.get("identity"), d.get("state"), when(d.get("last_contact")))
            for d in data["devices"]]
    return table(rows, ["eid", "name", "link", "identity", "state", "last contact"]) if rows else "no devices"


def show_device(data: dict[str, Any]) -> str:
    out = [f"{k + ':':14} {_cell(data.get(k))}" for k in ("eid", "name", "link", "identity", "state", "imei",
                                                         "quarantined")]
    out.append(f"{'last contact:':14} {when(data.get('last_contact'))}")
    session = data.get("session")
    out.append(f"{'session:':14} " + (f"{session['state']} (v{session['version']}, {when(session['updated_at'])})"
                                       if session else "-"))
    if data.get("inbox"):
        out += ["", "inbox:", table([(e["key"], e["kind"], e["state"], e["origin"], when(e["created_at"]))
                                     for e in data["inbox"]], ["key", "kind", "state", "origin", "created"])]
    if data.get("audit"):
        out += ["", "recent audit:", _audit_table(data["audit"])]
    return "\n".join(out)


def show_queue(data: dict[str, Any]) -> str:
    usage = data["outbox_usage"]
    out = [f"inbox:  {len(data['inbox'])} entries waiting for devices",
           f"outbox: {usage['entries']} entries ({usage['bytes']} bytes) of at most {usage['max_entries']}"
           + (f" -- {usage['level'].upper()}" if usage.get("level", "ok") != "ok" else "")]
    if data["inbox"]:
        out += ["", table([(e["eid"], e["key"], e["kind"], e["state"], when(e["created_at"])) for e in data["inbox"]],
                          ["eid", "key", "kind", "state", "created"])]
    if data["outbox"]:
        out += ["", table([(e["server"], e["key"], e["kind"], e["attempts"], when(e["next_attempt_at"]), e["last_error"])
                           for e in data["outbox"]], ["server", "key", "kind", "attempts", "next", "last error"])]
    states = {**data.get("outbox_breakers", {}), **data.get("backhaul", {})}
    if states:
        out += ["", table(sorted(states.items()), ["server", "circuit"])]
    return "\n".join(out)


def _audit_table(records: list[dict[str, Any]]) -> str:
    return table([(r["time_utc"], r["eid"], r["iccid"], r["operation"], r["result"],
                   (r.get("detail") or {}).get("detail", "") if isinstance(r.get("detail"), dict) else r.get("detail"))
                  for r in records], ["time", "eid", "iccid", "operation", "result", "detail"])


def show_audit(data: dict[str, Any]) -> str:
    return _audit_table(data["records"]) if data["records"] else "no audit records"


def show_group(final: dict[str, Any]) -> str:
    """The last progress line of a group operation, for people."""
    out = [f"{final['operation']} on group {final['group']}: {final['done']} done, {final['failed']} failed "
           f"of {final['total']} members"]
    if final["errors"]:
        out += ["", table([(e["eid"], e["error"]) for e in final["errors"]], ["eid", "error"])]
    return "\n".join(out)


async def group(args: argparse.Namespace) -> tuple[str, int]:
    """(what to print, exit code) of `group NAME OPERATION`."""
    base = f"/v1/groups/{args.group}"
    if args.operation == "audit":
        params = {k: str(v) for k, v in (("since", args.since), ("until", args.until)) if v is not None}
        text = (await call(args, "GET", f"{base}/audit", params)).decode().rstrip("\n")
        if args.json:
            return text, 0
        records = [json.loads(line) for line in text.splitlines()]
        return (_audit_table(records) if records else "no audit records"), 0
    body: dict[str, Any] = {}
    if args.reason:
        body["reason"] = args.reason
    if args.forget_imei:
        body["keep_binding"] = False
    text = (await call(args, "POST", f"{base}/{args.operation}", json_body=body)).decode().rstrip("\n")
    final = json.loads(text.splitlines()[-1])
    code = EXIT_PARTIAL if final["failed"] else 0
    return (text if args.json else show_group(final)), code


async def execute(args: argparse.Namespace) -> str:
    command = args.command
    if command == "metrics":
        return (await call(args, "GET", "/metrics")).decode()
    if command == "audit":
        params = {k: str(v) for k, v in (("eid", args.eid), ("operation", args.operation), ("since", args.since),
                                         ("until", args.until)) if v is not None}
        if args.jsonl:
            return (await call(args, "GET", "/v1/audit", {**params, "format": "jsonl"})).decode().rstrip("\n")
        params["limit"] = str(args.limit)
        data = json.loads(await call(args, "GET", "/v1/audit", params))
        return json.dumps(data, indent=2, sort_keys=True) if args.json else show_audit(data)
    if command == "device" and args.action:
        body = {"reason": args.reason} if args.reason else None
        data = json.loads(await call(args, "POST", f"/v1/devices/{args.eid}/{args.action}", json_body=body))
        return json.dumps(data, indent=2, sort_keys=True) if args.json else \
            f"{args.action} accepted for {data['eid']} (state now {data['state']})"
    path, show = {
        "status": ("/v1/status", show_status),
        "devices": ("/v1/devices", show_devices),
        "queue": ("/v1/queue", show_queue),
    }.get(command, (f"/v1/devices/{getattr(args, 'eid', '')}", show_device))
    data = json.loads(await call(args, "GET", path))
    return json.dumps(data, indent=2, sort_keys=True) if args.json else show(data)


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "group":
            text, code = asyncio.run(group(args))
        else:
            text, code = asyncio.run(execute(args)), 0
    except ApiFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    print(text)
    return code
