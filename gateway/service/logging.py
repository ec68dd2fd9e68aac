"""Logging of the daemon: the journal under systemd, stderr elsewhere, secrets never shown.

Under systemd the unit's stderr is a journal stream and systemd says so in JOURNAL_STREAM
("<device>:<inode>" of that stream, see systemd.exec(5)); when it matches our stderr, records
go to the journal natively (systemd.journal.JournalHandler) with their structured fields:
EID, ICCID, OPERATION, TRANSACTION, so `journalctl -u ipae-gateway EID=89...` finds every line
about one device. Otherwise (a terminal, a test, the .deb test running the daemon by hand)
records go to stderr as text, the same fields appended as `key=value`.

`RedactingFilter` sits on the handler, so it sees every record of every logger before it is
written: it renders the message, masks every secret value it was given (the credentials file's
PSKs, passwords and tokens, in any letter case) and anything shaped like a secret
(`password=...`, `"token": "..."`, `Authorization: Bearer ...`, URL user:password@, PEM private
keys), the same in exception text and in extra fields, and leaves no unrendered argument behind
for a handler to send (the journal handler sends every record attribute).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, TextIO

REDACTED = "<redacted>"
FIELDS = ("EID", "ICCID", "OPERATION", "TRANSACTION")
SYSLOG_IDENTIFIER = "ipae-gateway"

_SECRET_NAMES = (r"password|passwd|pass|pwd|psk|secret|token|bearer_token|access_token|api[_-]?key"
                 r"|private[_-]?key|client[_-]?key|credentials?")
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S),
     f"-----{REDACTED} PRIVATE KEY-----"),
    (re.compile(r"(?i)\b(authorization\s*[:=]\s*(?:bearer|basic)\s+)[^\s\"',;]+"), rf"\g<1>{REDACTED}"),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\g<1>{REDACTED}"),
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/\s@]+:)[^@\s/]+@"), rf"\g<1>{REDACTED}@"),
    (re.compile(rf"(?i)([\"']?\b(?:{_SECRET_NAMES})\b[\"']?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&}}\]]+)"),
     rf"\g<1>{REDACTED}"),
)
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class RedactingFilter(logging.Filter):
    """Masks known secret values and secret-shaped text in every record that passes."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()
        self._formatter = logging.Formatter()
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        """Replace the known secret values (on start and on every configuration reload)."""
        variants: set[str] = set()
        for s in secrets:
            if len(s) >= 4:
                variants.update((s, s.lower(), s.upper()))
        self._secrets = tuple(sorted(variants, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string must not hide the record
            message = f"{record.msg!r} (unformattable: {exc!r})"
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info:
            record.exc_text = self.redact(self._formatter.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name, value in list(record.__dict__.items()):
            if name not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, name, self.redact(value))
        return True


def log_fields(*, eid: bytes | None = None, iccid: bytes | str | None = None,
               operation: str | None = None, transaction: bytes | str | None = None) -> dict[str, str]:
    """The `extra=` of a record about one device: journal fields EID, ICCID, OPERATION, TRANSACTION."""
    fields: dict[str, str] = {}
    if eid is not None:
        fields["EID"] = eid.hex().upper()
    if iccid is not None:
        fields["ICCID"] = iccid.hex().upper() if isinstance(iccid, bytes) else iccid
    if operation is not None:
        fields["OPERATION"] = operation
    if transaction is not None:
        fields["TRANSACTION"] = transaction.hex().upper() if isinstance(transaction, bytes) else transaction
    return fields


class DeviceLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger bound to a device's fields; fields given per call are added to (and win over) them."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def bind(logger: logging.Logger, **fields: Any) -> DeviceLogger:
    """`bind(log, eid=..., operation="downloadProfile")` -> a logger that tags every line."""
    return DeviceLogger(logger, log_fields(**fields))


class TextFormatter(logging.Formatter):
    """stderr format: time, level, logger, message, then the structured fields present."""

    def __init__(self, with_time: bool = True) -> None:
        fmt = "%(asctime)s " if with_time else ""
        super().__init__(fmt + "%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tags = " ".join(f"{f}={getattr(record, f)}" for f in FIELDS if getattr(record, f, None))
        if not tags:
            return text
        first, sep, rest = text.partition("\n")
        return f"{first} [{tags}]{sep}{rest}"


def under_journal(environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """True when our stderr is the journal stream systemd connected (JOURNAL_STREAM matches)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup_logging(level: str = "info", *, secrets: Iterable[str] = (), stream: TextIO | None = None,
                  environ: Mapping[str, str] | None = None,
                  journal_sender: Callable[..., Any] | None = None) -> RedactingFilter:
    """Install the one root handler (journal or stderr) with the redaction filter; returns the filter
    so a reload can give it the new secrets. `journal_sender` replaces systemd.journal.send (tests)."""
    redactor = RedactingFilter(secrets)
    handler: logging.Handler
    if under_journal(environ, stream):
        from systemd.journal import JournalHandler

        kwargs: dict[str, Any] = {"SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER}
        if journal_sender is not None:
            kwargs["sender_function"] = journal_sender
        handler = JournalHandler(**kwargs)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(TextFormatter())
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_ipae_gateway", False)]:
        root.removeHandler(old)
        old.close()
    handler._ipae_gateway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    return redactor
