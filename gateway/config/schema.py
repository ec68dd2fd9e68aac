"""Strict conversion of parsed TOML tables into frozen dataclasses.

Every configuration class is a frozen dataclass whose fields carry their documentation and
constraints in `field(metadata=...)`, built with `setting()`. `build()` walks a TOML table
against such a class: an unknown key, a value of the wrong type or a value outside its
constraints raises `ConfigError` naming the file the key came from, the dotted key and what
was expected. Field types understood: bool, int, float, str, Path, Literal[...], `T | None`,
`tuple[T, ...]`, `Mapping[str, T]` and nested dataclasses (TOML sub-tables).

Where a key came from is told by an `Origins` map (dotted key -> file), so a value set in a
drop-in is reported against the drop-in, not against the main file.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from gateway.config.secret import Secret
from gateway.errors import ConfigError

T = TypeVar("T")

Check = Callable[[Any], str | None]
"""A constraint: returns None when the value is acceptable, else what is expected."""


def setting(default: Any, doc: str, *, min: float | None = None, max: float | None = None,
            choices: tuple[Any, ...] | None = None, pattern: str | None = None,
            check: Check | None = None, secret: bool = False) -> Any:
    """A documented dataclass field with its constraints (all checked by `build`)."""
    meta = {"doc": doc, "min": min, "max": max, "choices": choices,
            "pattern": pattern, "check": check, "secret": secret}
    if isinstance(default, (list, dict)):
        raise TypeError("mutable default")
    return dataclasses.field(default=default, metadata=meta)


def table(cls: type[Any], doc: str) -> Any:
    """A nested sub-table field whose defaults are the class defaults."""
    return dataclasses.field(default_factory=cls, metadata={"doc": doc, "table": True})


class Origins:
    """Which file set each dotted key (the most specific prefix wins)."""

    def __init__(self, default_file: str) -> None:
        self.default_file = default_file
        self._by_key: dict[str, str] = {}

    def record(self, key: str, file: str) -> None:
        self._by_key[key] = file

    def file_of(self, key: str) -> str:
        parts = re.sub(r"\[\d+\]", "", key).split(".")
        while parts:
            hit = self._by_key.get(".".join(parts))
            if hit is not None:
                return hit
            parts.pop()
        return self.default_file


def build(cls: type[T], data: Mapping[str, Any], origins: Origins, prefix: str = "") -> T:
    """Convert one TOML table into `cls`, rejecting anything it does not declare."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a table, got {_kind(data)}",
                          file=origins.file_of(prefix), key=prefix or None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            full = dotted(prefix, key)
            known = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"unknown key (known keys here: {known})",
                              file=origins.file_of(full), key=full)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        full = dotted(prefix, name)
        values[name] = convert(hints[name], data[name], origins, full, f.metadata)
    return cls(**values)


def convert(tp: Any, value: Any, origins: Origins, key: str,
            meta: Mapping[str, Any] | None = None) -> Any:
    """Convert one value to the type `tp` and check the field's constraints."""
    meta = meta or {}

    def fail(expected: str) -> ConfigError:
        shown = "a secret value" if meta.get("secret") else _show(value)
        return ConfigError(f"expected {expected}, got {shown}", file=origins.file_of(key), key=key)

    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        # TOML has no null: an optional key is simply left out; only a T can appear here.
        return convert(inner[0] if len(inner) == 1 else Union[tuple(inner)], value, origins, key, meta)
    if dataclasses.is_dataclass(tp):
        return build(typing.cast(type[Any], tp), value, origins, key)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or type(value) is not type(allowed[0]):
            raise fail("one of " + ", ".join(repr(a) for a in allowed))
        return value
    if origin is tuple:
        item_tp = get_args(tp)[0]
        if not isinstance(value, list):
            raise fail("an array")
        items = tuple(convert(item_tp, v, origins, f"{key}[{i}]", {}) for i, v in enumerate(value))
        _check(items, meta, fail)
        return items
    if origin in (Mapping, dict):
        _, val_tp = get_args(tp)
        if not isinstance(value, Mapping):
            raise fail("a table")
        converted = {k: convert(val_tp, v, origins, dotted(key, k), meta)
                     for k, v in value.items()}
        return types.MappingProxyType(converted)
    if tp is Secret:
        if not isinstance(value, str) or not value:
            raise fail("a non-empty string")
        secret = Secret(value)
        _check(secret, meta, fail)
        return secret
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer" + _range(meta))
        _check(value, meta, fail)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number" + _range(meta))
        _check(float(value), meta, fail)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        _check(value, meta, fail)
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise fail("a non-empty path string")
        path = Path(value)
        _check(path, meta, fail)
        return path
    raise TypeError(f"unsupported configuration type {tp!r} for {key}")


def _check(value: Any, meta: Mapping[str, Any], fail: Callable[[str], ConfigError]) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise fail("a value" + _range(meta))
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise fail("one of " + ", ".join(repr(c) for c in choices))
    pattern = meta.get("pattern")
    if pattern is not None and not re.fullmatch(pattern, str(value)):
        raise fail(f"a value matching {pattern}")
    check = meta.get("check")
    if check is not None:
        problem = check(value)
        if problem is not None:
            raise fail(problem)


def _range(meta: Mapping[str, Any]) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" of at least {lo}"
    if hi is not None:
        return f" of at most {hi}"
    return ""


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = repr(value)
    return f"{_kind(value)} {text if len(text) <= 60 else text[:57] + '...'}"


def _bare(key: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_-]+", key) is not None


def dotted(prefix: str, key: str) -> str:
    """The TOML dotted key of `key` inside table `prefix` (quoted when it must be)."""
    k = key if _bare(key) else f'"{key}"'
    return f"{prefix}.{k}" if prefix else k


def documented_keys(cls: type[Any], prefix: str = "") -> dict[str, str]:
    """Every dotted leaf key of a configuration class with its documentation line."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        full = dotted(prefix, f.name)
        if f.metadata.get("table"):
            out.update(documented_keys(hints[f.name], full))
        else:
            out[full] = str(f.metadata.get("doc", ""))
    return out
