"""Config defaults, read from their one home: the workflow's schema (``workflow/schemas/config.schema.yaml``).

Snakemake fills these defaults in when it validates a config; the Python commands (``python -m features job extract``,
``python -m captioner job train``, ...) read the same ones here for whatever their caller leaves out, so a default is
never written twice. Model-architecture defaults are the model dataclasses' own (see the schema's description).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


@lru_cache(maxsize=None)
def schema() -> dict:
    import yaml

    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def defaults(*section: str) -> dict:
    """``{key: default}`` of the keys of a config section, e.g. ``defaults("features", "grid")`` or
    ``defaults("sat")``; keys without a default are absent."""
    node = schema()
    for key in section:  # "*": any entry of a map of named entries (features.backbones.<name>)
        node = node["additionalProperties"] if key == "*" else node["properties"][key]
    return {key: sub["default"] for key, sub in node.get("properties", {}).items() if "default" in sub}
