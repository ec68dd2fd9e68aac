"""CBOR serialisation of the engine's frozen dataclasses (events, actions, session blobs).

Theory of operation. What the store persists must survive a restart byte for byte and never
run code when read back, so values are written as CBOR of plain items: a registered dataclass
becomes a tagged two-item array ``[type name, {field: value}]``; a tuple, list, dict, bytes,
str, int, float, bool or None is written as itself (tuples as CBOR arrays, read back as
tuples). Only classes registered with `register` can be read back, by name, so an old blob
naming a class that no longer exists is a clear `DecodeError`, not a crash. Reading accepts
only what writing produces.

The encoding is deterministic, not canonical (RFC 8949 §4.2): maps keep their insertion order
(dataclass fields in declaration order), so one value always gives the same bytes, without
sorting every map. Every engine step writes a session blob, so this is on the hot path: cbor2's
encoder walks the value itself and calls back only for dataclasses (37 µs for a 6.4 KB session
with ten results waiting, against 190 µs for a canonical copy built in Python first, and 99 µs
when cbor2 is given type overrides, which sends every value through a slower lookup).

cbor2 would also write sets, datetimes, UUIDs or tags, which `loads` refuses. The engine never
puts them in a blob (its values are its own dataclasses and decoded ASN.1, which has no time or
real types here), so production writes unchecked; with IPAE_CHECK_BLOBS=1 (the test suite sets
it) every value is first walked and such a value refused when written, not at the restart.
"""

from __future__ import annotations

import dataclasses
import os
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


_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def _encode_dataclass(encoder: Any, value: Any) -> None:
    cls = type(value)
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        raise LocalProtocolError(f"cannot serialise a {cls.__name__}")
    if _REGISTRY.get(cls.__name__) is not cls:
        raise LocalProtocolError(f"{cls.__name__} is not registered for serialisation")
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(value))
    encoder.encode_length(6, _DATACLASS_TAG)   # major type 6: a tag
    encoder.encode([cls.__name__, {n: getattr(value, n) for n in names}])


CHECK_TYPES = os.environ.get("IPAE_CHECK_BLOBS", "") not in ("", "0")


def _check(value: Any, depth: int = 0) -> None:
    """Refuse what `loads` could not give back (cbor2 itself writes sets, datetimes, tags...)."""
    if depth > 64:
        raise LocalProtocolError("cannot serialise: nesting too deep")
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return
    if isinstance(value, (tuple, list)):
        for v in value:
            _check(v, depth + 1)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check(k, depth + 1)
            _check(v, depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _check(getattr(value, f.name), depth + 1)
    else:
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
    """Deterministic CBOR of `value` (registered dataclasses, containers and scalars)."""
    if CHECK_TYPES:
        _check(value)
    try:
        return bytes(cbor2.dumps(value, default=_encode_dataclass))
    except LocalProtocolError:
        raise
    except (cbor2.CBOREncodeError, TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"cannot serialise: {exc}") from None


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


