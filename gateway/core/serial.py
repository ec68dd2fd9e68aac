"""CBOR serialisation of the engine's frozen dataclasses (events, actions, session blobs).

Theory of operation. What the store persists must survive a restart byte for byte and never
run code when read back, so values are written as canonical CBOR (RFC 8949 §4.2) of plain
items: a registered dataclass becomes a two-item array ``[type name, {field: value}]``; a
tuple, list, dict, bytes, str, int, float, bool or None is written as itself (tuples as CBOR
arrays, read back as tuples). Only classes registered with `register` can be read back, by
name, so an old blob naming a class that no longer exists is a clear `DecodeError`, not a
crash. Reading accepts only what writing produces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import cbor2

from gateway.errors import DecodeError, LocalProtocolError

T = TypeVar("T")

_REGISTRY: dict[str, type[Any]] = {}
_DATACLASS_TAG = 0xDC  # marks [name, fields] arrays that are dataclasses, not plain tuples


def register(cls: type[T]) -> type[T]:
    """Make a frozen dataclass serialisable (decorator). Names must be unique."""
    if not dataclasses.is_dataclass(cls):
        raise LocalProtocolError(f"{cls.__name__} is not a dataclass")
    name = cls.__name__
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise LocalProtocolError(f"two serialisable classes named {name}")
    _REGISTRY[name] = cls
    return cls


def _to_item(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, (tuple, list)):
        return [_to_item(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_item(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if _REGISTRY.get(name) is not type(value):
            raise LocalProtocolError(f"{name} is not registered for serialisation")
        fields = {f.name: _to_item(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return cbor2.CBORTag(_DATACLASS_TAG, [name, fields])
    raise LocalProtocolError(f"cannot serialise a {type(value).__name__}")


def _from_item(item: Any, depth: int = 0) -> Any:
    if depth > 64:
        raise DecodeError("nesting too deep", type_name="engine blob")
    if item is None or isinstance(item, (bool, int, float, str, bytes)):
        return item
    # cbor2 hands the content of a tag back as immutable containers (tuple, frozendict)
    if isinstance(item, (list, tuple)):
        return tuple(_from_item(v, depth + 1) for v in item)
    if isinstance(item, Mapping):
        return {k: _from_item(v, depth + 1) for k, v in item.items()}
    if isinstance(item, cbor2.CBORTag) and item.tag == _DATACLASS_TAG:
        value = item.value
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str)
                and isinstance(value[1], Mapping)):
            raise DecodeError("malformed dataclass item", type_name="engine blob")
        cls = _REGISTRY.get(value[0])
        if cls is None:
            raise DecodeError(f"unknown class {value[0]!r}", type_name="engine blob")
        kwargs = {k: _from_item(v, depth + 1) for k, v in value[1].items()}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise DecodeError(f"{value[0]}: {exc}", type_name="engine blob") from None
    raise DecodeError(f"unexpected CBOR item {type(item).__name__}", type_name="engine blob")


def dumps(value: Any) -> bytes:
    """Canonical CBOR of `value` (registered dataclasses, containers and scalars)."""
    return bytes(cbor2.dumps(_to_item(value), canonical=True))


def loads(data: bytes) -> Any:
    """The value `dumps` wrote; DecodeError for anything else."""
    try:
        item = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several classes; none may escape
        raise DecodeError(f"not CBOR: {exc}", type_name="engine blob") from None
    return _from_item(item)


def loads_as(cls: type[T], data: bytes) -> T:
    value = loads(data)
    if not isinstance(value, cls):
        raise DecodeError(f"expected {cls.__name__}, got {type(value).__name__}", type_name="engine blob")
    return value


