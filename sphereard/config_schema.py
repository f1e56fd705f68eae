"""Strict conversion of YAML mappings into typed dataclasses.

Every key is checked against the dataclass fields and every value against its type hint; no
value anywhere may be NaN or +-Inf. The first problem raises one `UserError` naming the full key
path and the value.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union

from sphereard.errors import UserError


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    """Fail fast with one line: `key=value: rule`. Used in dataclass __post_init__ validation."""
    if not ok:
        raise UserError(f"{key}={value!r}: {rule}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _reject_non_finite(value: Any, key: str) -> None:
    """No NaN or +-Inf anywhere (YAML `.nan`, `.inf`), also inside free-form mappings (`overrides`)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{key}={value!r}: must be a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_non_finite(v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_non_finite(v, f"{key}[{i}]")


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    _reject_non_finite(value, key)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, key)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0] if len(errors) == 1 else f"{key}={value!r}: expected {_type_name(hint)}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{key}={value!r}: must be one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{key}={value!r}: expected a list")
        return [_convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}={value!r}: expected a mapping")
        return {str(k): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}={value!r}: expected a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}={value!r}: expected an integer")
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise UserError(f"{key}={value!r}: expected {hint.__name__}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {key}")


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    where = path or "<root>"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where}={data!r}: expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        key = f"{path}.{unknown[0]}" if path else unknown[0]
        raise UserError(f"{key}: unknown key (allowed: {', '.join(sorted(fields))})")
    kwargs = {name: _convert(hints[name], data[name], f"{path}.{name}" if path else name)
              for name in fields if name in data}
    try:
        return cls(**kwargs)
    except UserError as err:
        raise UserError(f"{path}.{err}" if path else str(err)) from None


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)
