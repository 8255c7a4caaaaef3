"""Typed stage configs: dataclass defaults <- YAML file <- command-line flags.

Each stage declares a dataclass; `add_config_args` turns its fields into `--flags` (help shows the
default) and `resolve_config` merges the layers, rejecting unknown keys and wrong types with a
one-line error. A YAML config file holds one mapping per stage name (`index:`, `shard:`, ...), so
one
file can configure a whole experiment; the resolved config is saved beside each stage's outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from webly.core.errors import WeblyError
from webly.core.files import write_atomic

C = TypeVar("C")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Each field's resolved type (cached: the CLI asks for every stage's on each start; read
    only)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one value to a field's declared type; raise WeblyError naming `where`."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise WeblyError(f"{where}: must not be null")
    origin = typing.get_origin(base)
    if origin is typing.Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise WeblyError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(base) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise WeblyError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        items = [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if base is Any:
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise WeblyError(f"{where}: expected true/false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise WeblyError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise WeblyError(f"{where}: expected an integer, got {value!r}") from None
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise WeblyError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise WeblyError(f"{where}: expected a number, got {value!r}") from None
    if base is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise WeblyError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise WeblyError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise WeblyError(f"{p}: invalid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise WeblyError(f"{p}: expected a mapping of stage names to options")
    return data


def resolve_config(cls: type[C], *layers: dict[str, Any] | None, where: str = "config") -> C:
    """Build `cls` from its defaults overlaid by each mapping in `layers` (later wins)."""
    types_ = _field_types(cls)
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            name = key.replace("-", "_")
            if name not in types_:
                close = difflib.get_close_matches(name, list(types_), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise WeblyError(
                    f"{where}: unknown option {key!r}{hint}; valid: {', '.join(sorted(types_))}"
                )
            merged[name] = coerce(value, types_[name], f"{where}.{name}")
    cfg = cls(**merged)
    check = getattr(cfg, "validate", None)
    if check is not None:
        check()
    return cfg


def config_from_args(cls: type[C], args: argparse.Namespace, stage: str) -> C:
    """Resolve a stage config: defaults <- `--config FILE`'s `stage:` section <- explicit flags."""
    file_layer: dict[str, Any] = {}
    if getattr(args, "config", None):
        section = load_yaml(args.config).get(stage) or {}
        if not isinstance(section, dict):
            raise WeblyError(f"{args.config}: section {stage!r} must be a mapping")
        file_layer = section
    names = [f.name for f in dataclasses.fields(cls) if hasattr(args, f.name)]
    flags = {name: getattr(args, name) for name in names}
    return resolve_config(cls, file_layer, flags, where=stage)


def check_choices(cfg: Any, where: str) -> None:
    """Every `Literal` field holds one of its choices (configs built in code skip `coerce`)."""
    for name, tp in _field_types(type(cfg)).items():
        base, optional = _unwrap_optional(tp)
        value = getattr(cfg, name)
        choices = typing.get_args(base) if typing.get_origin(base) is typing.Literal else None
        if choices is not None and not (optional and value is None) and value not in choices:
            raise WeblyError(f"{where}.{name}: {value!r} is not one of {list(choices)}")


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--flag` per dataclass field; flags left out do not override the YAML layer."""
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(_field_types(cls)[f.name])
        # type: ignore[misc]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f"{f.metadata.get('help', '')} (default: {default!r})".strip().replace("%", "%%")
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_)
        elif typing.get_origin(tp) is typing.Literal:
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=help_,
                               choices=list(typing.get_args(tp)))
        else:
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=help_,
                               metavar=f.name.upper())


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path, stage: str) -> Path:
    """Write the resolved config as `{stage: {...}}` YAML (re-loadable with `--config`)."""
    return write_atomic(path, yaml.safe_dump({stage: to_dict(cfg)}, sort_keys=False))


def parse_part(text: str, name: str) -> tuple[int, int]:
    """'i/n' (this machine's part i of n, 0 <= i < n) -> (i, n); how work is split over machines."""
    try:
        i, n = (int(x) for x in text.split("/"))
        if 0 <= i < n:
            return i, n
    except ValueError:
        pass
    raise WeblyError(f"{name} must be 'i/n' with 0 <= i < n, got {text!r}")


def opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    """A dataclass field with help text for the CLI."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d),
                                 metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})
