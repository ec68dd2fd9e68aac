"""A secret value that does not print itself.

PSKs, passwords and bearer tokens are wrapped in `Secret` as soon as they are read, so a
stray `repr()`, f-string or log call shows `<redacted>`; code that needs the value calls
`reveal()`. The logging redaction filter (gateway.service.logging) is the second line of
defence and is given every revealed value through `all_values()`.
"""

from __future__ import annotations


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __len__(self) -> int:
        return len(self._value)
