# -*- test-case-name: tests.test_config -*-
"""
Reading relayd's TOML configuration into its attrs tables: value types,
the top-level C{include} key, relative paths, and L{ConfigError}.

Every table maps onto one frozen attrs class (L{relayd.config.schema} and
the section modules); every key onto one field.  A key the classes do not
know or a value of the wrong type raises L{ConfigError} naming the dotted
key.

This module imports no reactor code.
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import attrs

__all__ = [
    "MAX_INCLUDE_DEPTH",
    "PATH_FIELDS",
    "ConfigError",
    "build",
    "resolve_paths",
    "with_includes",
]


class ConfigError(Exception):
    """
    The configuration cannot be used.

    C{str(error)} is one line meant for the operator:
    C{"<file>: <dotted.key>: <what is wrong>"}.
    """


#: Fields that hold file-system paths, resolved against the config's folder.
PATH_FIELDS = {
    ("tls", "certificate"),
    ("tls", "key"),
    ("auth", "tokens_file"),
    ("dev_upstream", "outbox"),
    ("limits", "auth_hmac_key_file"),
}


def _describe(tp: Any) -> str:
    """
    Say in words what a value of type C{tp} looks like.
    """
    if tp is float:
        return "a number of seconds"
    if tp is int:
        return "a whole number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list of strings"
    if origin is dict:
        return "a table of strings"
    return "a table"


def _convert(tp: Any, value: Any, key: str) -> Any:
    """
    Check C{value} against the annotated type C{tp} and convert it.

    @raise ConfigError: (without the file name) when it does not fit.
    """
    expected = _describe(tp)
    if attrs.has(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {expected}")
        return build(tp, value, key)
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected {expected}")
        return value
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {expected}")
        if attrs.has(item):
            return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected {expected}")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{key}: expected {expected}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected {expected}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{key}: expected {expected}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{key}: expected {expected}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected {expected}")
        return value
    raise ConfigError(f"{key}: unsupported setting")  # pragma: no cover


def build(cls: Any, table: dict[str, Any], prefix: str) -> Any:
    """
    Build the attrs class C{cls} from the TOML table C{table}.

    @param cls: An attrs class whose fields' annotations are the types
        L{_convert} knows.
    @param table: The parsed TOML table.
    @param prefix: Its dotted key (C{""} for the whole file).
    @return: An instance of C{cls}.
    @raise ConfigError: (without the file name) naming the key.
    """
    hints = typing.get_type_hints(cls)
    known = {a.name: a for a in attrs.fields(cls) if a.name != "path"}
    kwargs = {}
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in known:
            raise ConfigError(f"{key}: unknown setting")
        tp = hints[name]
        if isinstance(tp, types.UnionType):  # pragma: no cover
            tp = typing.get_args(tp)[0]
        kwargs[name] = _convert(tp, value, key)
    try:
        return cls(**kwargs)
    except TypeError as e:
        missing = [n for n, a in known.items() if a.default is attrs.NOTHING and n not in kwargs]
        raise ConfigError(
            f"{prefix}.{missing[0] if missing else '?'}: required setting is missing"
        ) from e


#: How deep C{include} may nest (a preset that includes another).
MAX_INCLUDE_DEPTH = 4


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """
    Lay the TOML table C{overlay} over C{base}: tables merge key by key,
    any other value (a string, a number, an array, an array of tables such
    as C{[[listeners]]}) replaces the base's whole.

    @return: A new table; the arguments are not changed.
    """
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _absolute_paths(table: dict[str, Any], folder: Path) -> dict[str, Any]:
    """
    Resolve the relative paths of an included file against its own folder
    (L{PATH_FIELDS}), so that they mean the same as when it is loaded
    alone.
    """
    table = dict(table)
    for section, name in PATH_FIELDS:
        sub = table.get(section)
        if isinstance(sub, dict) and isinstance(sub.get(name), str) and sub[name]:
            if not os.path.isabs(sub[name]):
                table[section] = dict(sub, **{name: str(folder / sub[name])})
    return table


def with_includes(table: dict[str, Any], path: str, depth: int = 0) -> dict[str, Any]:
    """
    Resolve the top-level C{include} key: the named TOML file (a path
    relative to the including file's folder) is read first and this
    table laid over it (L{_merge}).

    @param table: The parsed TOML table.
    @param path: The file it came from, or C{""}.
    @param depth: How many includes deep C{table} is.
    @return: The merged table, without C{include}.

    @raise ConfigError: (without the file name) for an unreadable or
        invalid included file, or includes nested too deep.
    """
    if "include" not in table:
        return table
    table = dict(table)
    target = table.pop("include")
    if not isinstance(target, str) or not target:
        raise ConfigError("include: expected a string")
    if depth >= MAX_INCLUDE_DEPTH:
        raise ConfigError(f"include: nested more than {MAX_INCLUDE_DEPTH} deep")
    folder = Path(path).parent if path else Path(".")
    included = Path(target) if os.path.isabs(target) else folder / target
    try:
        base = tomllib.loads(included.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"include: {included}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"include: {included}: cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"include: {included}: not valid TOML: {e}") from None
    base = with_includes(base, str(included), depth + 1)
    return _merge(_absolute_paths(base, included.parent), table)


def resolve_paths(config: Any, base: Path) -> Any:
    """
    Resolve the relative paths of a loaded configuration (L{PATH_FIELDS})
    against C{base}.

    @param config: A L{relayd.config.Config}.
    @param base: The folder of the configuration file.
    @return: The configuration with absolute paths.
    """
    changes: dict[str, Any] = {}
    for table, name in PATH_FIELDS:
        section = getattr(config, table)
        value = getattr(section, name)
        if value and not os.path.isabs(value):
            section = changes.get(table, section)
            changes[table] = attrs.evolve(section, **{name: str(base / value)})
    return attrs.evolve(config, **changes)
