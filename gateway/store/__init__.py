"""Durable state of the gateway in one SQLite file: registry, queues, sessions, audit log."""

from gateway.store.aio import AsyncStore
from gateway.store.audit import AuditLog, AuditRecord
from gateway.store.deliveries import Deliveries, WaitingDelivery
from gateway.store.devices import Device, Devices
from gateway.store.drain import DrainResult, Outcome, OutboxDrainer
from gateway.store.errors import (
    IdempotencyConflict, LinkIdentityTaken, MigrationFailed, NotAGatewayDatabase, OutboxFull, SchemaTooNew,
    StaleSession, StoreCorrupt, StoreDiskFull, StoreError, StoreIntegrityError, StoreIOError, StoreLocked, StoreReadOnly,
    StoreUnavailable,
)
from gateway.store.inbox import Inbox, InboxEnqueued, InboxEntry, package_key, transaction_key
from gateway.store.migrations import Migration, MigrationReport
from gateway.store.outbox import Outbox, OutboxEnqueued, OutboxEntry, OutboxLimits, OutboxUsage
from gateway.store.policy_state import PolicyState, PolicyStates
from gateway.store.sessions import Session, Sessions
from gateway.store.store import Store, StoreOptions

__all__ = [
    "AsyncStore", "AuditLog", "AuditRecord", "Deliveries", "WaitingDelivery", "Device", "Devices", "DrainResult", "Outcome", "OutboxDrainer",
    "IdempotencyConflict", "LinkIdentityTaken", "MigrationFailed", "NotAGatewayDatabase", "OutboxFull",
    "SchemaTooNew", "StaleSession", "StoreCorrupt", "StoreDiskFull", "StoreError", "StoreIntegrityError", "StoreIOError",
    "StoreLocked", "StoreReadOnly", "StoreUnavailable", "Inbox", "InboxEnqueued", "InboxEntry",
    "package_key", "transaction_key", "Migration", "MigrationReport", "Outbox", "OutboxEnqueued", "OutboxEntry",
    "OutboxLimits", "OutboxUsage", "PolicyState", "PolicyStates", "Session", "Sessions", "Store", "StoreOptions",
]
