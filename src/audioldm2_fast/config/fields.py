"""A typed schema in plain dataclasses, and the one checker that reads it.

A schema is a dataclass whose annotations give each key's type (``int``, ``float``, ``bool``, ``str``, ``Any``,
``X | None``, ``list[X]``, ``dict[str, X]``, a nested schema, or a union of those) and whose :func:`setting` metadata
gives the rest: allowed values, numeric bounds, a pattern. :func:`check_node` turns a config node into an instance of
its schema or raises one ``ConfigError`` naming the first offending key, with the message the user sees. Unknown keys
are refused, keys without a default are required, and numbers are finite.

Hydra's own structured configs (OmegaConf) would type the nodes too, but their errors span several lines, and a
closed root schema cannot take the config groups that users add from their own search path; see ``README``, "How it
fits together".
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..runtime.errors import ConfigError

S = TypeVar("S")
_NOTHING = dataclasses.MISSING


def setting(
    default: Any = _NOTHING,
    *,
    choices: Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    pattern: str | None = None,
    describe: str | None = None,
    doc: str = "",
) -> Any:
    """A schema field. Without a default the key is required (the YAML file that defines the group gives it).

    ``choices`` lists the allowed values; ``ge``/``gt``/``le``/``lt`` bound numbers; ``pattern`` is a regular
    expression a string must match in full, and ``describe`` says in words what it allows.
    """
    metadata = {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "pattern": pattern}
    metadata = {k: v for k, v in metadata.items() if v is not None}
    metadata["describe"], metadata["doc"] = describe, doc
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """OmegaConf containers as Python ones (interpolations resolved)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any value"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (list, Sequence):
        return f"a list of {_type_name(typing.get_args(tp)[0])}s" if typing.get_args(tp) else "a list"
    if origin in (dict, Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp``, or ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return _plain(value)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"must be {_type_name(tp)} (got {_shown(value)})")
    if value is None:
        raise ConfigError(key, f"must be {_type_name(tp)}, not null")
    if dataclasses.is_dataclass(tp):
        return check_node(value, tp, key)
    if origin in (list, Sequence):
        value = _plain(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"must be {_type_name(tp)} (got {_shown(value)})")
        (item_type,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        value = _plain(value)
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping (got {_shown(value)})")
        _, item_type = typing.get_args(tp) or (str, Any)
        return {str(k): _convert(v, item_type, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false (got {_shown(value)})")
        return value
    if tp is int:
        if not _is_int(value):
            raise ConfigError(key, f"must be an integer (got {_shown(value)})")
        return value
    if tp is float:
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number (got {_shown(value)})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string (got {_shown(value)})")
        return value
    raise TypeError(f"unsupported schema type {tp!r} for {key}")


def _shown(value: Any) -> str:
    value = _plain(value)
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__


def _check_constraints(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(key, f"{value!r} is not one of: {', '.join(map(str, choices))}")
    bounds = [(op, meta[op]) for op in ("ge", "gt", "le", "lt") if op in meta]
    if bounds and isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = all({"ge": value >= b, "gt": value > b, "le": value <= b, "lt": value < b}[op] for op, b in bounds)
        if not ok:
            words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
            kind = "an integer" if _is_int(value) else "a number"
            limits = " and ".join(f"{words[op]} {b:g}" for op, b in bounds)
            raise ConfigError(key, f"must be {kind} {limits} (got {value!r})")
    pattern = meta.get("pattern")
    if pattern is not None and isinstance(value, str) and not re.fullmatch(pattern, value):
        raise ConfigError(key, f"must be {meta.get('describe') or 'of the form ' + pattern} (got {value!r})")


def schema_fields(schema: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type) of a schema dataclass, in declaration order."""
    hints = typing.get_type_hints(schema)
    return [(f, hints[f.name]) for f in dataclasses.fields(schema) if f.init]


def check_node(node: Any, schema: type[S], key: str = "", ignore: Sequence[str] = ()) -> S:
    """Check a config node against its schema and return the typed value (a ``schema`` instance).

    ``key`` is the node's dotted path, used in messages (``""`` for the root). Keys in ``ignore`` are skipped (for
    example ``_target_``, which names the schema itself).
    """
    if node is None or not hasattr(node, "keys"):
        raise ConfigError(key, f"must be a mapping of settings (got {_shown(node)})")
    prefix = f"{key}." if key else ""
    fields = schema_fields(schema)
    names = {f.name for f, _ in fields}
    for name in node:
        if name not in names and name not in ignore:
            raise ConfigError(f"{prefix}{name}", "unknown key (check the spelling; --cfg job lists every key)")
    values: dict[str, Any] = {}
    for f, tp in fields:
        where = f"{prefix}{f.name}"
        if f.name not in node:
            if f.default is _NOTHING and f.default_factory is _NOTHING:
                raise ConfigError(where, "required")
            continue
        try:
            raw = node[f.name]
        except Exception as exc:  # noqa: BLE001 - an interpolation that cannot be resolved, reported on its key
            raise ConfigError(where, f"cannot be resolved: {str(exc).splitlines()[0]}") from None
        value = _convert(raw, tp, where)
        _check_constraints(value, f.metadata, where)
        values[f.name] = value
    return schema(**values)


def check_value(schema: type, name: str, value: Any, key: str | None = None) -> Any:
    """One field of a schema on its own: a plain Python ``value`` (a JSON request's, say) converted to the field's
    type and checked against its bounds, or ConfigError naming ``key`` (default: the field's name)."""
    for f, tp in schema_fields(schema):
        if f.name == name:
            converted = _convert(value, tp, key or name)
            _check_constraints(converted, f.metadata, key or name)
            return converted
    raise KeyError(name)


def check_resolvable(node: Any, key: str = "", root: Any = None) -> None:
    """Raise ConfigError naming the first key whose interpolation cannot be resolved (``${oc.env:UNSET}``,
    ``${no.such.key}``, an unknown resolver), wherever in the config it is, read or not.

    A key that only points at another (``decode_batch_size: ${memory.decode_batch_size}``) leaves the blame to the key
    it points at. A value that uses Hydra's own ``${hydra:...}`` resolver is left to Hydra when no Hydra run is set up
    yet; a node that is itself an interpolation of another node (``scheduler: ${scheduler}``) is checked there.
    """
    root = node if root is None else root
    if isinstance(node, DictConfig):
        keys: list[Any] = list(node.keys())
    elif isinstance(node, ListConfig):
        keys = list(range(len(node)))
    else:
        return
    for k in keys:
        where = f"{key}[{k}]" if isinstance(k, int) else (f"{key}.{k}" if key else str(k))
        raw = _interpolation(node, k)
        if "${hydra:" in raw and not HydraConfig.initialized():
            continue
        try:
            value = node[k]
        except Exception as exc:  # noqa: BLE001 - every resolution failure is reported on its key
            raise _unresolved(root, where, raw, exc, {where}) from None
        if not raw:
            check_resolvable(value, where, root)


_REFERENCE = re.compile(r"\$\{([\w.]+)\}")


def _interpolation(node: Any, k: Any) -> str:
    """The raw ``${...}`` text of ``node[k]`` ("" when it is not an interpolation)."""
    child = node._get_node(k)
    return str(child._value()) if child is not None and child._is_interpolation() else ""


def _unresolved(root: Any, where: str, raw: str, exc: Exception, seen: set[str]) -> ConfigError:
    """The error for ``where``, or, when it only points at another key that fails itself, that key's."""
    target = _REFERENCE.fullmatch(raw)
    if target and target.group(1) not in seen:
        parent_key, _, last = target.group(1).rpartition(".")
        try:
            parent = OmegaConf.select(root, parent_key) if parent_key else root
        except Exception:  # noqa: BLE001 - the parent fails to resolve: keep the blame here
            parent = None
        try:
            exists = isinstance(parent, DictConfig) and parent._get_node(last) is not None
        except Exception:  # noqa: BLE001 - a key a struct config does not have
            exists = False
        if exists:
            try:
                parent[last]
            except Exception as inner:  # noqa: BLE001
                return _unresolved(root, target.group(1), _interpolation(parent, last), inner, {*seen, target.group(1)})
    return ConfigError(where, f"cannot be resolved: {str(exc).splitlines()[0]}")


def choices_of(schema: type, name: str) -> tuple[Any, ...]:
    """The allowed values of one field (empty when it has none)."""
    for f in dataclasses.fields(schema):
        if f.name == name:
            return tuple(f.metadata.get("choices") or ())
    raise KeyError(name)
