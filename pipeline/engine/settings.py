"""One typed-settings convention for stage and training settings: coerce or refuse, never guess.

Settings enter cache keys, so equal settings must be equal values: a config's
``"2"`` and ``2`` must give one key, and ``2.5`` for an integer must be an
error rather than a silent truncation. Every settings class is a dataclass;
`build_settings` checks each value against the field's annotation:

- ``int``: ints, and strings or floats that hold an exact integer (``"2"``, ``2.0``);
  bools, ``2.5`` and ``"two"`` are refused.
- ``float``: ints, floats and numeric strings, stored as float (so ``1`` and ``1.0`` agree).
- ``bool``: ``true``/``false`` (and the strings ``"true"``/``"false"``, ``"1"``/``"0"``).
- ``str``: strings only.
- ``X | None``: ``None`` (or JSON ``null``) or an X.
- ``tuple[T, ...]`` / ``tuple[T, T]`` / ``list[T]``: sequences, element by element, length checked.
- ``dict[str, T]``: objects, values checked.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Union


class SettingsError(ValueError):
    """A setting of the wrong type or an unknown setting name; the message names both."""


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _number(value: Any, tp: type, where: str) -> int | float:
    """`value` as an int or a float by the rules in the module docstring; a bool is never a number here."""
    if isinstance(value, str):
        try:
            return tp(value.strip())
        except ValueError:
            pass
    elif not isinstance(value, bool):
        if tp is float and isinstance(value, (int, float)):
            return float(value)
        if tp is int and isinstance(value, int):
            return value
        if tp is int and isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
    raise SettingsError(f"{where} must be {'an integer' if tp is int else 'a number'}, got {value!r}")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` as type `tp`, or SettingsError naming `where` (e.g. ``faces.detect_every``)."""
    optional, inner = _is_optional(tp)
    if optional:
        return None if value is None else coerce(value, inner, where)
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        raise SettingsError(f"{where} must be true or false, got {value!r}")
    if tp in (int, float):
        return _number(value, tp, where)
    if tp is str:
        if isinstance(value, str):
            return value
        raise SettingsError(f"{where} must be a string, got {value!r}")
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise SettingsError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise SettingsError(f"{where} must have {len(args)} elements, got {len(value)}")
            items = [coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            elem = args[0] if args else Any
            items = [coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise SettingsError(f"{where} must be an object, got {value!r}")
        kt, vt = (typing.get_args(tp) or (Any, Any))
        return {coerce(k, kt, f"{where} key"): coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise SettingsError(f"{where}: cannot check a value of type {tp!r}")


def build_settings(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    """An instance of the dataclass `cls` from `values`, each coerced to its field's type.

    `where` prefixes every message (a stage name, ``train``). Unknown names are
    errors: a misspelt setting silently ignored is how stale features reach a paper.
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise SettingsError(f"{where} settings must be an object of name: value, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SettingsError(f"unknown setting(s) for {where}: {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(fields))})")
    typed = {name: coerce(value, hints[name], f"{where}.{name}") for name, value in values.items()}
    try:
        return cls(**typed)
    except TypeError as exc:
        raise SettingsError(f"{where}: {exc}") from None
