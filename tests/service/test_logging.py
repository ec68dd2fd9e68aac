"""Logging: stderr text or journal fields, structured device fields, and secrets never written.

journald is not running in this sandbox, so the journal path is exercised through
JournalHandler's own `sender_function` hook: the records are exactly what systemd.journal.send
would receive.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.service.logging import REDACTED, RedactingFilter, bind, log_fields, setup_logging, under_journal
from service_support import API_TOKEN, MQTT_PASSWORD, PSK_HEX

EID = bytes.fromhex("89049032123451234512345678901235")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    # pytest's own capture handlers would see each record before ours: set them aside.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for h in handlers:
        root.removeHandler(h)
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_stderr_lines_carry_the_structured_fields() -> None:
    out = io.StringIO()
    setup_logging("debug", stream=out, environ={})
    log = bind(logging.getLogger("gateway.core"), eid=EID, operation="enableProfile")
    log.info("batch %d sent", 7, extra=log_fields(transaction=b"\x01\x02"))
    line = out.getvalue().strip()
    assert "INFO gateway.core: batch 7 sent" in line
    assert line.endswith("[EID=89049032123451234512345678901235 OPERATION=enableProfile TRANSACTION=0102]")


def test_level_from_configuration_drops_lower_records() -> None:
    out = io.StringIO()
    setup_logging("warning", stream=out, environ={})
    logging.getLogger("x").info("quiet")
    logging.getLogger("x").warning("loud")
    assert "quiet" not in out.getvalue() and "loud" in out.getvalue()


def test_journal_is_chosen_only_when_journal_stream_is_our_stderr(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        assert under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        assert not under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream)
        assert not under_journal({"JOURNAL_STREAM": "garbage"}, stream)
        assert not under_journal({}, stream)


def test_journal_records_have_eid_iccid_operation_transaction_fields(tmp_path: Path) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def sender(MESSAGE: str, **fields: Any) -> None:  # noqa: N803 (systemd.journal.send's name)
        sent.append((MESSAGE, fields))

    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        setup_logging("info", stream=stream, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
                      journal_sender=sender, secrets=[MQTT_PASSWORD])
        logging.getLogger("gateway.links.mqtt").warning(
            "broker refused %s", MQTT_PASSWORD,
            extra=log_fields(eid=EID, iccid="8944500000000000001", operation="download", transaction="abc"))
    (message, fields), = sent
    assert message == f"broker refused {REDACTED}"
    assert fields["EID"] == "89049032123451234512345678901235"
    assert (fields["ICCID"], fields["OPERATION"], fields["TRANSACTION"]) == ("8944500000000000001", "download", "abc")
    assert fields["SYSLOG_IDENTIFIER"] == "ipae-gateway"
    assert fields["PRIORITY"] == "4"
    assert MQTT_PASSWORD not in repr(fields)
    assert "CODE_ARGS" not in fields


@pytest.mark.parametrize("text", [
    f"connecting with password={MQTT_PASSWORD} now",
    f'{{"password": "{MQTT_PASSWORD}", "user": "gw"}}',
    f"Authorization: Bearer {API_TOKEN}",
    f"mqtts://gateway:{MQTT_PASSWORD}@broker.lan:8883",
    f"psk: {PSK_HEX}",
    f"token='{API_TOKEN}'",
    "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBmVzZWNyZXQ=\n-----END EC PRIVATE KEY-----",
])
def test_secret_shaped_text_is_masked_even_without_knowing_the_secret(text: str) -> None:
    masked = RedactingFilter().redact(text)
    assert REDACTED in masked
    for secret in (MQTT_PASSWORD, API_TOKEN, PSK_HEX, "MHcCAQEEIBmVzZWNyZXQ="):
        assert secret not in masked


def test_configuration_keys_in_error_messages_are_left_alone() -> None:
    text = "gateway.toml:links.coap.port: expected an integer"
    assert RedactingFilter().redact(text) == text


def test_known_secrets_are_masked_in_message_args_exception_and_extra_fields() -> None:
    out = io.StringIO()
    setup_logging("debug", stream=out, environ={}, secrets=[PSK_HEX, API_TOKEN])
    log = logging.getLogger("gateway.links.coap")
    try:
        raise ValueError(f"handshake failed for key {PSK_HEX.upper()}")
    except ValueError:
        log.exception("DTLS error with %r", bytes.fromhex(PSK_HEX).hex(), extra={"OPERATION": f"x{API_TOKEN}"})
    written = out.getvalue()
    assert "DTLS error with" in written and "ValueError: handshake failed" in written
    for secret in (PSK_HEX, PSK_HEX.upper(), API_TOKEN):
        assert secret not in written
    assert written.count(REDACTED) >= 3


def test_secrets_of_a_loaded_configuration_never_reach_the_log(etc: Path, write_credentials: Any) -> None:
    write_credentials(f'[mqtt]\npassword = "{MQTT_PASSWORD}"\n[api]\nbearer_token = "{API_TOKEN}"\n'
                      f'[dtls_psk]\nmeter = "{PSK_HEX}"\n')
    config = load_config(etc / "gateway.toml")
    out = io.StringIO()
    redactor = setup_logging("debug", stream=out, environ={}, secrets=config.credentials.secret_values())
    log = logging.getLogger("gateway")
    log.debug("config %r", config)
    log.debug("raw %s %s %s", config.credentials.mqtt.password and config.credentials.mqtt.password.reveal(),
              config.credentials.api.bearer_token and config.credentials.api.bearer_token.reveal(),
              config.credentials.psk("meter"))
    redactor.set_secrets([])
    log.debug("after reload the old secret %s is shown", PSK_HEX[:8])
    written = out.getvalue()
    for secret in (MQTT_PASSWORD, API_TOKEN, PSK_HEX):
        assert secret not in written
    assert PSK_HEX[:8] in written


def test_setup_logging_twice_keeps_one_handler() -> None:
    setup_logging("info", stream=io.StringIO(), environ={})
    setup_logging("info", stream=io.StringIO(), environ={})
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_ipae_gateway", False)]
    assert len(ours) == 1


def test_unformattable_record_is_still_logged() -> None:
    out = io.StringIO()
    setup_logging("info", stream=out, environ={})
    ours, = (h for h in logging.getLogger().handlers if getattr(h, "_ipae_gateway", False))
    ours.handle(logging.makeLogRecord({"name": "x", "levelno": logging.INFO, "levelname": "INFO",
                                       "msg": "%d items", "args": ("not a number",)}))
    assert "'%d items' (unformattable" in out.getvalue()
