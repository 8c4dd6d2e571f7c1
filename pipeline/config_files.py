"""Config files that extend others, and ``--config`` overrides of nested keys: resolved before the config is
validated (the Snakefile's first step), so an experiment is a file of the keys it changes.

- ``extends: config/coco.yaml`` (a path from the working directory) takes that file, itself possibly extending
  another, and merges this file over it: mappings key by key, anything else replaced. The merged whole is validated.
- ``--config 'evaluate={beam_size: 3}'`` sets nested keys: Snakemake merges the mapping into the section, and its
  values are typed here as YAML types them (Snakemake itself passes them on as strings). A dotted key
  (``evaluate.beam_size=3``) is refused by Snakemake's own parser before the workflow starts.

Torch-free and Snakemake-free: ``tests/test_config_files.py`` runs it alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pipeline.errors import InputError
from pipeline.spec import resolve


class PlanError(SystemExit):
    """What a config asks that cannot be, found while planning: one ``error:`` line naming the config file and the
    key, no traceback (a SystemExit: Snakemake prints neither its frame nor the schema). The Snakefile sets
    ``config_file``; the rule files raise it."""

    config_file = "the config"

    def __init__(self, message: str):
        super().__init__(f"error: {PlanError.config_file}: {message}")


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` over ``base``: mappings merged key by key, any other value replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config file is a mapping of keys, got {type(data).__name__}")
    return data


def resolve_extends(config: dict, source: str | Path, seen: tuple[Path, ...] = ()) -> tuple[dict, list[Path]]:
    """``config`` (read from ``source``) merged over the files it extends; and the files of the chain, the root
    first (the file that extends nothing). A config without ``extends`` comes back as it is, with an empty chain."""
    base_name = config.get("extends")
    if base_name is None:
        return config, []
    if not isinstance(base_name, str) or not base_name:
        raise InputError(f"{source}: extends: expected the path of a config file, got {base_name!r}")
    path = Path(base_name)
    if not path.is_file():
        raise InputError(f"{source}: extends: {base_name} is not a file (paths are from the working directory)")
    if path.resolve() in seen:
        raise InputError(f"{source}: extends: {base_name} is already in the chain ({' -> '.join(map(str, seen))})")
    base, chain = resolve_extends(read(path), path, (*seen, path.resolve()))
    own = {key: value for key, value in config.items() if key != "extends"}
    return deep_merge(base, own), [*chain, path]


def typed_overrides(overrides: dict) -> dict:
    """``--config`` values as YAML reads them: Snakemake parses a section given on the command line
    (``--config 'evaluate={beam_size: 3}'``) with YAML's base loader, every scalar a string ('3'); each is read
    again as a YAML scalar here (3). Top-level values Snakemake already typed (numbers, booleans) stay."""

    def typed(value, nested: bool):
        if isinstance(value, dict):
            return {key: typed(item, True) for key, item in value.items()}
        if isinstance(value, list):
            return [typed(item, True) for item in value]
        if nested and isinstance(value, str):
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            return parsed if parsed is None or isinstance(parsed, (bool, int, float, str)) else value
        return value

    return {key: typed(value, False) for key, value in overrides.items()}


# ------------------------------------------------------------------------------------------ schema errors, one line
def _relevant(error):
    """The error to report: inside oneOf/anyOf, the branch of the instance's own type (a mapping's errors, not that
    it is not null), deepest first."""
    while error.context:
        branches = [e for e in error.context if not (e.validator == "type" and not e.relative_path)]
        if not branches:
            break
        error = max(branches, key=lambda e: len(e.absolute_path))
    return error


def _unknown_keys(error) -> list[str]:
    """The keys an additional/unevaluated-properties error is about: those neither named nor matched by a pattern
    (an unevaluated-properties error also lists keys whose values failed: those are reported for their values)."""
    if error.validator not in ("additionalProperties", "unevaluatedProperties") or not isinstance(error.instance, dict):
        return []
    known = resolve(error.schema).get("properties", {})
    patterns = error.schema.get("patternProperties", {})
    return sorted(key for key in error.instance
                  if key not in known and not any(re.search(pattern, key) for pattern in patterns))


def describe(error) -> str:
    """One line: the key path, what is wrong, what is allowed, and YAML's 1e-3 trap where it applies."""
    error = _relevant(error)
    path = ".".join(str(part) for part in error.absolute_path)
    where = f"{path}: " if path else ""
    unknown = _unknown_keys(error)
    if unknown:
        known = sorted(resolve(error.schema).get("properties", {}))
        pattern = error.schema.get("patternProperties")
        allowed = (f"names matching {', '.join(pattern)}" if pattern and not known else
                   f"known keys: {', '.join(known)}")
        return f"{path + '.' if path else ''}{unknown[0]}: unknown key ({allowed})"
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, str) else " or ".join(
            error.validator_value)
        hint = ""
        if isinstance(error.instance, str) and expected in ("number", "integer"):
            try:
                float(error.instance)
                hint = f" (YAML reads {error.instance} as text: write it with a dot, e.g. 1.0e-3, or as 0.001)"
            except ValueError:
                pass
        return f"{where}{error.instance!r} is not a{'n' if expected[0] in 'aeiou' else ''} {expected}{hint}"
    if error.validator == "enum":
        return f"{where}{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "required":
        return f"{where}{error.message.split(' is a required')[0]} is required"
    return f"{where}{error.message.splitlines()[0]}"


def schema_problem(config: dict, schema: dict) -> str | None:
    """The config's first problem against the schema as one line, or None (Snakemake's own validation, which fills
    in the defaults, follows)."""
    from jsonschema import Draft202012Validator

    errors = [error for error in Draft202012Validator(schema).iter_errors(config)
              if error.validator != "unevaluatedProperties" or _unknown_keys(error)]
    errors.sort(key=lambda e: list(map(str, e.absolute_path)))
    return describe(errors[0]) if errors else None
