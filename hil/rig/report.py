"""The step log of a rig scenario: what ran, how many APDUs, how long, and the outcome.

Theory of operation. A scenario runs as named steps (`with log.step("GetEUICCInfo2") as s:`).
Each step records the APDUs the card backend carried during it (from the `Counting`
wrapper), its wall time, whether it succeeded, a one-line detail, and any data worth keeping
for the JSON summary. A step that raises is recorded as failed with the error's class and
message, and the error goes on (the scenario decides whether to stop); `soft=True` steps
swallow a `GatewayError` instead (a probe of a function the card may lack). Lines are
printed as they finish, so a slow modem shows progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from gateway.errors import GatewayError
from hil.rig.backends import Counting


@dataclass
class StepRecord:
    name: str
    ok: bool = True
    apdus: int = 0
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "ok": self.ok, "apdus": self.apdus,
                               "seconds": round(self.seconds, 3), "detail": self.detail}
        if self.data:
            out["data"] = self.data
        return out


@dataclass
class StepLog:
    counter: Counting
    out: TextIO | None = None
    clock: Callable[[], float] = time.monotonic
    steps: list[StepRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.started = self.clock()

    @contextmanager
    def step(self, name: str, *, soft: bool = False) -> Iterator[StepRecord]:
        record = StepRecord(name)
        apdus, began = self.counter.apdus, self.clock()
        try:
            yield record
        except GatewayError as exc:
            record.ok = False
            record.detail = f"{type(exc).__name__}: {exc}"
            if not soft:
                raise
        except Exception as exc:
            record.ok = False
            record.detail = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            record.apdus = self.counter.apdus - apdus
            record.seconds = self.clock() - began
            self.steps.append(record)
            self._print(record)

    def note(self, text: str) -> None:
        if self.out is not None:
            print(f"[{self.clock() - self.started:7.2f}s] {text}", file=self.out, flush=True)

    def _print(self, r: StepRecord) -> None:
        status = "ok  " if r.ok else "FAIL"
        self.note(f"{status} {r.name:<34} {r.apdus:5d} APDUs {r.seconds:8.3f}s  {r.detail}")

    @property
    def apdus(self) -> int:
        return self.counter.apdus

    @property
    def seconds(self) -> float:
        return self.clock() - self.started
