"""A frozen config dataclass from a (Config)dict, and back: golfjax/config.py's conversion.

`build(cls, mapping, path)` coerces every value to its field's annotated type
and constructs the dataclass (nested dataclasses recursively); an unknown key,
a value of the wrong type or a value the dataclass refuses raises a
`ConfigError` naming the full dotted key, e.g. `config.eval.every=0; expected
>= 1` or `unknown config key train.lrr; did you mean train.lr?`. `to_dict` is
the inverse, JSON-able, for checkpoints.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Mapping


class ConfigError(ValueError):
    """A config value the run refuses; the message is one line naming its dotted key."""


def _unknown(path: str, key: str, known: list[str]) -> str:
    """`unknown config key train.bogus; did you mean ...` for `key` under `path`."""
    dotted = f"{path}.{key}".removeprefix("config.").removeprefix("config")
    parent = dotted.rpartition(".")[0]
    prefix = f"{parent}." if parent else ""
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    if close:
        return f"unknown config key {dotted}; did you mean {' or '.join(prefix + c for c in close)}?"
    return f"unknown config key {dotted}; did you mean one of {', '.join(known)}?"


def unknown_key(cls: type, dotted: str) -> str | None:
    """The `unknown config key ...` message for a dotted key (`"train.bogus"`)
    that `cls` does not have, or None. Below a mapping field (`task.kwargs`)
    every key is accepted: its owner checks it."""
    path = "config"
    for name in dotted.split("."):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return None
        fields = sorted(f.name for f in dataclasses.fields(cls))
        if name not in fields:
            return _unknown(path, name, fields)
        cls, path = typing.get_type_hints(cls)[name], f"{path}.{name}"
    return None


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Coerces a ConfigDict value to the annotated type, or raises naming `path`."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        non_none = [t for t in options if t is not type(None)]
        return _convert(value, non_none[0], path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r}; expected a sequence")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is not None and issubclass(origin, Mapping):
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}={value!r}; expected a mapping")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{path}={value!r}; expected {tp.__name__}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{path}={value!r}; expected int")
    return value


def _field_message(cls: type, path: str, message: str, fields: Mapping[str, Any]) -> str:
    """`message` about one field (`name=...`, `name: ...`, `Cls.name=...`) as a dotted key."""
    match = re.match(rf"(?:{cls.__name__}\.)?(\w+)(?=[=:])", message)
    if match and match.group(1) in fields:
        return f"{path}.{message[match.start(1):]}"
    return f"{path}: {message}"


def build(cls: type, mapping: Any, path: str = "config") -> Any:
    """A `cls` dataclass from a (Config)dict; unknown or bad keys name `path`.

    Raises:
      ConfigError: one line naming the first unknown or refused dotted key.
    """
    if hasattr(mapping, "to_dict"):
        mapping = mapping.to_dict()
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{path}={mapping!r}; expected a mapping of {cls.__name__} fields")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields), key=str)
    if unknown:
        raise ConfigError(_unknown(path, str(unknown[0]), sorted(fields)))
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: _convert(value, hints[name], f"{path}.{name}") for name, value in mapping.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(_field_message(cls, path, str(e), fields)) from e


def to_dict(config: Any) -> Any:
    """A JSON-able dict of a (nested) config dataclass, for checkpoints."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config
