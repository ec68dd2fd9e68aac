"""The IPA engine: per-device state machines. Pure: no I/O, no asyncio, no sqlite3."""
