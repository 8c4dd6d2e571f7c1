"""Typed job specs: each workflow job gets its settings as one JSON object (its config keys), parsed into a
dataclass whose fields declare every setting's type and allowed values once (``Literal``). Each field names its
config key (:func:`setting`): the schema gives its default (the one home of defaults), the workflow reads its value
from the config (:func:`from_config`), and ``tests/test_specs.py`` holds every spec class against the schema
(:func:`schema_mismatches`: keys, types, allowed values, defaults). ``parse`` names the key at fault:
``error: --spec.precision: 'fp8' is not one of 'auto', 'fp32', 'bf16'``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from pipeline.config import defaults, schema
from pipeline.errors import InputError

Precision = Literal["auto", "fp32", "bf16"]  # auto: bf16 where the device has native bf16 units (CUDA), else fp32


def default(*path: str):
    """A config key's default, read from the schema (``default("sat", "lr")``)."""
    *section, key = path
    try:
        return defaults(*section)[key]
    except KeyError:
        raise KeyError(f"the config schema has no default for {'.'.join(path)}") from None


def setting(*path: str, required: bool = False):
    """A spec field that is the config key ``path``, with the schema's default (none when ``required``: the workflow
    always gives it, e.g. resolved weights)."""
    metadata = {"config": path}
    if required:
        return dataclasses.field(metadata=metadata)
    value = default(*path)
    if isinstance(value, (list, dict)):
        return dataclasses.field(default_factory=lambda: json.loads(json.dumps(value)), metadata=metadata)
    return dataclasses.field(default=value, metadata=metadata)


def config_key(spec_field: dataclasses.Field) -> tuple[str, ...] | None:
    return spec_field.metadata.get("config")


def from_config(cls, config: dict, **given) -> dict:
    """The JSON object of a spec, read from the (validated) config at each field's key; ``given``: fields the
    workflow resolves itself."""
    values = {}
    for spec_field in dataclasses.fields(cls):
        if spec_field.name in given:
            values[spec_field.name] = given[spec_field.name]
            continue
        node = config
        for key in config_key(spec_field):
            node = node[key]
        values[spec_field.name] = node
    return values


def compact_json(obj) -> str:
    """One line of JSON, keys sorted: equal settings give equal text (a rule's params, compared for reruns)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def to_json(cls, config: dict, **given) -> str:
    """:func:`from_config` as the JSON a rule passes with ``--spec``."""
    return compact_json(from_config(cls, config, **given))


def load(text: str) -> dict:
    """A spec given on the command line: inline JSON, or the path of a JSON/YAML file."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"--spec is not valid JSON: {error}") from None
    path = Path(text)
    if not path.is_file():
        raise InputError(f"--spec: {text} is neither a JSON object nor a file")
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise InputError(f"--spec {path}: not valid YAML/JSON ({error})") from None


def add_spec_argument(parser, cls) -> None:
    """A job's ``--spec`` option, its help naming the spec class and where it is defined."""
    where = cls.__module__.replace(".", "/") + ".py"
    parser.add_argument("--spec", required=True, help=f"the settings: JSON (inline or a file) of {cls.__name__} ({where})")


def spec_from_args(cls, args):
    """The job's ``--spec`` parsed into ``cls``."""
    return parse(cls, load(args.spec), "--spec")


def parse(cls, data: Any, where: str):
    """``cls`` from ``data`` (a dict), every value checked against its field's type; ``where`` prefixes the key in
    errors."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InputError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    values = {}
    for name, spec_field in known.items():
        if name in data:
            values[name] = _check(hints[name], data[name], f"{where}.{name}")
        elif spec_field.default is dataclasses.MISSING and spec_field.default_factory is dataclasses.MISSING:
            raise InputError(f"{where}.{name}: missing")
    return cls(**values)


def check_choice(value, allowed, key: str) -> None:
    """``value`` is one of a ``Literal``'s values (for dataclasses built from keyword arguments, not parsed)."""
    _check(allowed, value, key)


def _check(kind, value, key: str):
    origin = get_origin(kind)
    if kind is Any:
        return value
    if origin is Literal:
        if value not in get_args(kind):
            allowed = ", ".join(repr(a) for a in get_args(kind))
            raise InputError(f"{key}: {value!r} is not one of {allowed}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in get_args(kind):
            try:
                return _check(option, value, key)
            except InputError as error:
                errors.append(str(error))
        raise InputError(errors[-1] if len(errors) == 1 else f"{key}: {value!r} fits none of {kind}")
    if kind is type(None):
        if value is not None:
            raise InputError(f"{key}: expected null, got {value!r}")
        return None
    if dataclasses.is_dataclass(kind):
        return parse(kind, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise InputError(f"{key}: expected a list, got {value!r}")
        (item,) = get_args(kind) or (Any,)
        return [_check(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise InputError(f"{key}: expected an object, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise InputError(f"{key}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{key}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{key}: expected a number, got {value!r}")
        return value  # an int stays an int: recorded as the config wrote it
    if kind is str:
        if not isinstance(value, str):
            raise InputError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: the spec type {kind} is not supported")


# ------------------------------------------------------------------------------------------ against the schema
def section(*path: str) -> dict:
    """The schema node of a config section, its references and ``allOf`` parts merged in."""
    node = schema()
    for key in path:  # "*": any entry of a map of named entries (features.backbones.<name>)
        node = resolve(node)["additionalProperties"] if key == "*" else resolve(node)["properties"][key]
    return resolve(node)


def resolve(node: dict) -> dict:
    """A schema node with ``$ref`` (to ``#/$defs/...``) and ``allOf`` merged into one ``properties`` mapping."""
    merged = {k: v for k, v in node.items() if k not in ("$ref", "allOf")}
    parts = []
    if "$ref" in node:
        parts.append(schema()["$defs"][node["$ref"].removeprefix("#/$defs/")])
    parts += node.get("allOf", [])
    for part in parts:
        part = resolve(part)
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**value, **merged.get("properties", {})}
                for name, sub in value.items():
                    if name in node.get("properties", {}):  # e.g. a default added to a shared definition
                        merged["properties"][name] = {**sub, **node["properties"][name]}
            elif key not in merged:
                merged[key] = value
    return merged


JSON_TYPES = {bool: {"boolean"}, int: {"integer"}, float: {"number", "integer"}, str: {"string"}, list: {"array"},
              dict: {"object"}, type(None): {"null"}}


def _schema_types(node: dict) -> set[str]:
    node = resolve(node)
    if "enum" in node:
        return {"enum"}
    if "oneOf" in node or "anyOf" in node:
        return set().union(*(_schema_types(option) for option in node.get("oneOf", node.get("anyOf"))))
    declared = node.get("type")
    return set(declared) if isinstance(declared, list) else {declared} if declared else {"any"}


def _enum(node: dict) -> list | None:
    node = resolve(node)
    if "enum" in node:
        return list(node["enum"])
    if "items" in node:  # a list of allowed values (evaluate.metrics)
        return _enum(node["items"])
    for option in node.get("oneOf", []) + node.get("anyOf", []):
        found = _enum(option)
        if found is not None:
            return found
    return None


def _nested(kind) -> bool:
    """A field holding a spec (or one of several): ``GridSettings | RegionSettings``."""
    options = [t for t in get_args(kind) if t is not type(None)] if get_origin(kind) in (typing.Union, types.UnionType) \
        else [kind]
    return all(dataclasses.is_dataclass(t) for t in options)


def _field_types(kind) -> tuple[set[str], list | None]:
    """(JSON types, allowed values or None) of a field type."""
    origin = get_origin(kind)
    if origin is Literal:
        return {"enum"}, list(get_args(kind))
    if origin in (typing.Union, types.UnionType):
        types_, allowed = set(), None
        for option in get_args(kind):
            more, values = _field_types(option)
            types_ |= more
            allowed = values if values is not None else allowed
        return types_, allowed
    if dataclasses.is_dataclass(kind):
        return {"object"}, None
    if origin is list and get_args(kind) and get_origin(get_args(kind)[0]) is Literal:
        return {"array"}, list(get_args(get_args(kind)[0]))
    base = origin or kind
    return set(JSON_TYPES.get(base, {"any"})), None


def schema_mismatches(cls) -> list[str]:
    """How a spec class and the config schema disagree: for each field, its config key (present, type, allowed
    values, default); for a class that stands for a whole section (``SECTION`` and ``NOT_IN_SPEC``, the section's
    keys that are the workflow's own), the section's keys it lacks."""
    hints = get_type_hints(cls)
    found = []
    for spec_field in dataclasses.fields(cls):
        name, path = spec_field.name, config_key(spec_field)
        if _nested(hints[name]):
            continue  # a nested spec: checked as a class of its own
        if path is None:
            found.append(f"{cls.__name__}.{name}: names no config key (use pipeline.spec.setting)")
            continue
        try:
            prop = resolve(section(*path[:-1])["properties"][path[-1]])
        except KeyError:
            found.append(f"{cls.__name__}.{name}: {'.'.join(path)} is not in the config schema")
            continue
        where = f"{cls.__name__}.{name} ({'.'.join(path)})"
        field_types, allowed = _field_types(hints[name])
        schema_types = _schema_types(prop)
        if "any" not in schema_types and "any" not in field_types and not (field_types & schema_types):
            found.append(f"{where}: the spec says {sorted(field_types)}, the schema {sorted(schema_types)}")
        enum = _enum(prop)
        if (enum is not None or allowed is not None) and sorted(map(str, enum or [])) != sorted(map(str, allowed or [])):
            found.append(f"{where}: allowed values differ: the spec {allowed}, the schema {enum}")
        value = (spec_field.default if spec_field.default is not dataclasses.MISSING else
                 spec_field.default_factory() if spec_field.default_factory is not dataclasses.MISSING else None)
        if "default" in prop and value is not None and value != prop["default"]:
            found.append(f"{where}: default {value!r} in the spec, {prop['default']!r} in the schema")
    whole = getattr(cls, "SECTION", None)
    if whole:
        covered = {config_key(f)[-1] for f in dataclasses.fields(cls)
                   if config_key(f) and tuple(config_key(f)[:-1]) == tuple(whole)}
        left = set(section(*whole).get("properties", {})) - covered - set(getattr(cls, "NOT_IN_SPEC", ()))
        found += [f"{cls.__name__}: {'.'.join((*whole, key))} is in the schema, not in the spec" for key in sorted(left)]
    return found
