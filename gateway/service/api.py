"""The management API (aiohttp): JSON over a unix socket, optionally over TCP with a bearer token.

Theory of operation. Every route reads the daemon through `ApiBackend` (the supervisor): the
store for devices, sessions, queues and the audit log, the runtime for what is in flight,
the metrics for Prometheus. Operator actions become OperatorAction events fed to the engine
through the runtime, so they follow the same path (one transaction, then I/O) as anything
else. The unix socket is the local operator's door (its file mode decides who may use it);
the TCP listener, when configured, refuses any request without the configured bearer token.

Routes (all under /v1 answer JSON; errors are {"error": "..."} with a 4xx/5xx status):

    GET  /v1/health                      liveness: {"status": "ok"|"stopping"}
    GET  /v1/status                      gateway id, uptime, links, backhaul, store, counters
    GET  /v1/devices                     every device with its session state and last contact
    GET  /v1/devices/{eid}               one device: registry, session, inbox, recent audit
    POST /v1/devices/{eid}/{action}      retry | cancel | forget | reread-eim | poll (engine),
                                         quarantine {"reason"} | release {"rebind", "keep_binding"} (policy)
    POST /v1/groups/{group}/{operation}  retry | reread-eim | quarantine | release on every member;
                                         progress streamed as JSON lines, the last one final
    GET  /v1/groups/{group}/audit        the members' audit records as JSON lines
    GET  /v1/sessions                    sessions not idle (procedures in flight)
    GET  /v1/queue                       inbox and outbox depth, pending entries, breakers
    GET  /v1/audit                       query: eid, operation, since, until, limit; format=jsonl
    POST /v1/reload                      re-read the configuration (as SIGHUP)
    GET  /metrics                        Prometheus text format
"""

from __future__ import annotations

import hmac
import io
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from gateway.core.events import OPERATOR_CANCEL, OPERATOR_FORGET, OPERATOR_POLL, OPERATOR_REREAD_EIM, OPERATOR_RETRY
from gateway.errors import ConfigError, GatewayError, UnknownDevice
from gateway.policy.bulk import GroupOperations, Progress
from gateway.service.metrics import CONTENT_TYPE, GatewayMetrics
from gateway.service.runtime import Runtime
from gateway.store import AsyncStore, Store

log = logging.getLogger(__name__)

OPERATOR_ACTIONS = (OPERATOR_RETRY, OPERATOR_CANCEL, OPERATOR_FORGET, OPERATOR_REREAD_EIM, OPERATOR_POLL)
POLICY_ACTIONS = ("quarantine", "release")
GROUP_OPERATIONS = ("retry", "reread-eim", "quarantine", "release")
AUDIT_DEFAULT_LIMIT = 100
AUDIT_MAX_LIMIT = 100_000


class ApiBackend(Protocol):
    """What the API reads from the running daemon (the supervisor implements it)."""

    runtime: Runtime
    astore: AsyncStore
    metrics: GatewayMetrics
    groups: GroupOperations

    def status(self) -> dict[str, Any]: ...

    def configured_devices(self) -> dict[bytes, dict[str, Any]]: ...

    def session_state(self, eid: bytes) -> str: ...

    def refresh_gauges(self, stats: dict[str, int]) -> None: ...

    async def reload(self) -> dict[str, Any]: ...

    async def device_policy(self, eid: bytes, action: str, args: dict[str, Any]) -> None: ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, sort_keys=True) + "\n",
                        content_type="application/json")


def _error(status: int, text: str) -> web.Response:
    return _json({"error": text}, status)


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object body ({} when there is none), or the 400 answer to send."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body must be a JSON object")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    return body


def parse_eid(text: str) -> bytes:
    try:
        eid = bytes.fromhex(text)
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"EID {text!r} is not 32 hex digits"}),
                                 content_type="application/json") from None
    if len(eid) != 16:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"EID {text!r} is not 32 hex digits"}),
                                 content_type="application/json")
    return eid


def _float_param(request: web.Request, name: str) -> float | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{name} must be a number (epoch seconds)"}),
                                 content_type="application/json") from None


def device_json(eid: bytes, configured: dict[str, Any] | None, stored: Any, state: str) -> dict[str, Any]:
    out: dict[str, Any] = {"eid": eid.hex(), "state": state, "configured": configured is not None}
    if configured is not None:
        out.update(configured)
    if stored is not None:
        out.update({
            "link": stored.link_kind, "identity": stored.link_identity, "imei": stored.imei,
            "quarantined": stored.quarantined, "last_contact": stored.last_contact,
            "last_status": stored.last_status, "has_eim_config": stored.eim_config is not None,
        })
    return out


def make_app(backend: ApiBackend, *, bearer_token: Callable[[], str | None] | None = None) -> web.Application:
    """The API application; with `bearer_token`, every request must carry that token."""

    @web.middleware
    async def guard(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if bearer_token is not None:
            expected = bearer_token()
            given = request.headers.get("Authorization", "")
            if not expected or not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
                return web.Response(status=401, text=json.dumps({"error": "bearer token required"}) + "\n",
                                    content_type="application/json",
                                    headers={"WWW-Authenticate": 'Bearer realm="ipae-gateway"'})
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except UnknownDevice as exc:
            return _error(404, str(exc))
        except ConfigError as exc:
            return _error(400, str(exc))
        except GatewayError as exc:
            log.warning("API %s %s failed: %s", request.method, request.path, exc)
            return _error(503, f"{type(exc).__name__}: {exc}")

    async def health(request: web.Request) -> web.Response:
        return _json({"status": "stopping" if backend.runtime.draining else "ok"})

    async def status(request: web.Request) -> web.Response:
        stats = await backend.astore.run(lambda s: s.stats())
        out = backend.status()
        out["store"] = stats
        return _json(out)

    async def devices(request: web.Request) -> web.Response:
        configured = backend.configured_devices()
        stored = {d.eid: d for d in await backend.astore.run(lambda s: s.devices.list())}
        out = [device_json(eid, configured.get(eid), stored.get(eid), backend.session_state(eid))
               for eid in sorted(set(configured) | set(stored))]
        return _json({"devices": out})

    async def device(request: web.Request) -> web.Response:
        eid = parse_eid(request.match_info["eid"])
        configured = backend.configured_devices().get(eid)

        def read(s: Store) -> dict[str, Any]:
            stored = s.devices.get(eid)
            if stored is None and configured is None:
                raise UnknownDevice(f"EID {eid.hex()} is not a device of this gateway")
            session = s.sessions.get(eid)
            audit = s.audit.query(eid=eid)[-20:]
            return {
                **device_json(eid, configured, stored, backend.session_state(eid)),
                "session": None if session is None else {
                    "state": session.state, "version": session.version, "updated_at": session.updated_at,
                    "blob_bytes": len(session.blob)},
                "inbox": [{"key": e.key, "kind": e.kind, "state": e.state, "origin": e.origin,
                           "created_at": e.created_at, "updated_at": e.updated_at, "bytes": len(e.payload)}
                          for e in s.inbox.entries(eid)[-50:]],
                "audit": [r.to_json() for r in audit],
            }
        return _json(await backend.astore.run(read))

    async def action(request: web.Request) -> web.Response:
        eid = parse_eid(request.match_info["eid"])
        kind = request.match_info["action"]
        if kind not in OPERATOR_ACTIONS + POLICY_ACTIONS:
            return _error(404, f"unknown action {kind!r}; one of {', '.join(OPERATOR_ACTIONS + POLICY_ACTIONS)}")
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        if kind in POLICY_ACTIONS:
            await backend.device_policy(eid, kind, body)
        else:
            if not all(isinstance(v, str) for v in body.values()):
                return _error(400, "the arguments of an engine action are strings")
            await backend.runtime.operator(eid, kind, tuple(sorted((str(k), v) for k, v in body.items())))
        log.info("operator action %s on %s", kind, eid.hex())
        return _json({"eid": eid.hex(), "action": kind, "accepted": True, "state": backend.session_state(eid)})

    async def sessions(request: web.Request) -> web.Response:
        rows = await backend.astore.run(lambda s: s.sessions.list())
        out = [{"eid": r.eid.hex(), "state": r.state, "version": r.version, "updated_at": r.updated_at,
                "engine_state": backend.session_state(r.eid)} for r in rows]
        return _json({"sessions": out, "pending_exchanges": backend.runtime.pending_exchanges,
                      "inflight": backend.runtime.inflight, "timers": backend.runtime.timers})

    async def queue(request: web.Request) -> web.Response:
        def read(s: Store) -> dict[str, Any]:
            inbox = [{"eid": e.eid.hex(), "key": e.key, "kind": e.kind, "state": e.state, "origin": e.origin,
                      "created_at": e.created_at} for eid in s.inbox.eids_with_work() for e in s.inbox.pending(eid)]
            # one list of what waits for the backhaul: the engine's deliveries (results, notifications,
            # cancellations; key = EID/delivery key) and the outbox's own entries (webhook events)
            outbox = [{"server": d.server, "key": d.idempotency_key, "kind": d.kind, "attempts": d.attempts,
                       "next_attempt_at": d.next_attempt_at, "last_error": None, "state": d.state}
                      for d in s.deliveries.list(limit=1000)]
            outbox += [{"server": e.server, "key": e.key, "kind": e.kind, "attempts": e.attempts,
                        "next_attempt_at": e.next_attempt_at, "last_error": e.last_error, "state": "pending"}
                       for e in s.outbox.pending()[:1000 - len(outbox)]]
            usage = s.outbox.usage()
            breakers = {server: s.outbox.load_breaker(server).state for server in s.outbox.servers()}
            return {"inbox": inbox, "outbox": outbox,
                    "outbox_usage": {"entries": usage.entries, "bytes": usage.payload_bytes,
                                     "max_entries": usage.limits.max_entries, "max_bytes": usage.limits.max_bytes,
                                     "alarm_ratio": usage.limits.alarm_ratio, "level": usage.level},
                    "outbox_breakers": breakers}
        out = await backend.astore.run(read)
        out["backhaul"] = backend.status().get("backhaul", {})
        return _json(out)

    async def audit(request: web.Request) -> web.Response:
        eid = parse_eid(request.query["eid"]) if request.query.get("eid") else None
        operation = request.query.get("operation") or None
        since, until = _float_param(request, "since"), _float_param(request, "until")
        if request.query.get("format") == "jsonl":
            def export(s: Store) -> str:
                buf = io.StringIO()
                s.audit.export_jsonl(buf, eid=eid, operation=operation, since=since, until=until)
                return buf.getvalue()
            text = await backend.astore.run(export)
            return web.Response(text=text, content_type="application/x-ndjson")
        limit_text = request.query.get("limit", str(AUDIT_DEFAULT_LIMIT))
        if not limit_text.isdigit() or not 0 < int(limit_text) <= AUDIT_MAX_LIMIT:
            return _error(400, f"limit must be an integer from 1 to {AUDIT_MAX_LIMIT}")
        limit = int(limit_text)

        def query(s: Store) -> list[dict[str, Any]]:
            records = s.audit.query(eid=eid, operation=operation, since=since, until=until)
            return [r.to_json() for r in records[-limit:]]
        return _json({"records": await backend.astore.run(query)})

    async def group_operation(request: web.Request) -> web.StreamResponse:
        group, operation = request.match_info["group"], request.match_info["operation"]
        if operation not in GROUP_OPERATIONS:
            return _error(404, f"unknown group operation {operation!r}; one of {', '.join(GROUP_OPERATIONS)}")
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        try:
            if not await backend.groups.members(group):
                return _error(404, f"group {group!r} has no member")
        except ConfigError as exc:
            return _error(404, str(exc))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        lines: list[bytes] = []

        def progress(p: Progress) -> None:
            lines.append((json.dumps(p.to_json(), sort_keys=True) + "\n").encode())

        ops = backend.groups
        if operation == "retry":
            final = await ops.retry_failed(group, progress)
        elif operation == "reread-eim":
            final = await ops.reread_eim(group, progress)
        elif operation == "quarantine":
            final = await ops.quarantine(group, str(body.get("reason", "operator request")), progress)
        else:
            final = await ops.release(group, progress, keep_binding=bool(body.get("keep_binding", True)))
        for line in lines:
            await response.write(line)
        log.info("group %s: %s on %d devices (%d failed)", group, operation, final.total, final.failed)
        await response.write_eof()
        return response

    async def group_audit(request: web.Request) -> web.Response:
        group = request.match_info["group"]
        out = io.StringIO()
        await backend.groups.export_audit(group, out, since=_float_param(request, "since"),
                                          until=_float_param(request, "until"))
        return web.Response(text=out.getvalue(), content_type="application/x-ndjson")

    async def reload(request: web.Request) -> web.Response:
        return _json(await backend.reload())

    async def metrics(request: web.Request) -> web.Response:
        stats = await backend.astore.run(lambda s: s.stats())
        backend.refresh_gauges(stats)
        return web.Response(body=backend.metrics.render().encode(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/devices", devices)
    app.router.add_get("/v1/devices/{eid}", device)
    app.router.add_post("/v1/devices/{eid}/{action}", action)
    app.router.add_get("/v1/sessions", sessions)
    app.router.add_get("/v1/queue", queue)
    app.router.add_get("/v1/audit", audit)
    app.router.add_post("/v1/groups/{group}/{operation}", group_operation)
    app.router.add_get("/v1/groups/{group}/audit", group_audit)
    app.router.add_post("/v1/reload", reload)
    app.router.add_get("/metrics", metrics)
    return app


class ApiServer:
    """The unix-socket site (always) and the TCP site (when configured, token required)."""

    def __init__(self, backend: ApiBackend, socket_path: Path, *, tcp: tuple[str, int] | None = None,
                 bearer_token: Callable[[], str | None] | None = None, socket_mode: int = 0o660) -> None:
        self._backend = backend
        self.socket_path = socket_path
        self._tcp = tcp
        self._token = bearer_token
        self._mode = socket_mode
        self._runners: list[web.AppRunner] = []
        self.tcp_port: int | None = None

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.is_socket():
            self.socket_path.unlink()   # left by a daemon that did not stop cleanly
        local = web.AppRunner(make_app(self._backend), handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await local.setup()
        self._runners.append(local)
        try:
            await web.UnixSite(local, str(self.socket_path)).start()
        except OSError as exc:
            await self.close()
            raise ConfigError(f"cannot listen on {self.socket_path}: {exc}", key="api.socket_path") from None
        self.socket_path.chmod(self._mode)
        if self._tcp is not None:
            if self._token is None:
                await self.close()
                raise ConfigError("the TCP API needs a bearer token", key="api.tcp_listen")
            remote = web.AppRunner(make_app(self._backend, bearer_token=self._token), handle_signals=False,
                                   access_log=None, shutdown_timeout=2.0)
            await remote.setup()
            self._runners.append(remote)
            try:
                site = web.TCPSite(remote, self._tcp[0], self._tcp[1])
                await site.start()
            except OSError as exc:
                await self.close()
                raise ConfigError(f"cannot listen on {self._tcp[0]}:{self._tcp[1]}: {exc}",
                                  key="api.tcp_listen") from None
            addresses = [a for a in remote.addresses if isinstance(a, tuple)]
            self.tcp_port = int(addresses[0][1]) if addresses else self._tcp[1]

    async def close(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
        if self.socket_path.is_socket():
            self.socket_path.unlink()
