"""Imports point one way, in the order of the DAG: shared helpers -> data -> features -> models -> training and
evaluation -> applications. Two packages never import each other (the check walks every import statement, those
inside functions included, as the code fingerprints do)."""

from __future__ import annotations

import ast
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

# (package prefix, rank); a module may import modules of a lower rank, and of its own package
LAYERS = [
    ("pipeline", 0),
    ("captioner.data", 1),
    ("features", 2),
    ("captioner.models", 3),
    ("captioner.training", 4),
    ("captioner.evaluation", 4),
    ("captioner.apps", 5),
    ("captioner", 6),  # the package itself: __init__ (no imports) and the __main__ dispatcher
]
TOP_LEVEL = ("pipeline", "captioner", "features")


def layer_of(module: str) -> tuple[str, int]:
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    raise AssertionError(f"module {module} belongs to no layer: add its package to LAYERS")


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in TOP_LEVEL]


def violations(root: Path) -> list[str]:
    wrong = []
    for package in TOP_LEVEL:
        for path in sorted((root / package).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            source_layer, source_rank = layer_of(module)
            for line, target in imports_of(path):
                target_layer, target_rank = layer_of(target)
                if target_layer == source_layer:
                    continue
                if target.split(".")[0] != module.split(".")[0] and source_layer.split(".")[0] != "captioner" \
                        and target.split(".")[0] == "captioner":
                    reason = "the features and pipeline packages never import captioner"
                elif target_rank >= source_rank:
                    reason = f"{target_layer} is not below {source_layer} in the DAG"
                else:
                    continue
                wrong.append(f"{path.relative_to(root)}:{line}: imports {target} ({reason})")
    return wrong


def test_every_import_points_down_the_dag():
    assert violations(PROJECT) == []


def test_the_check_catches_an_upward_import(tmp_path):
    for package in TOP_LEVEL:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "captioner/models").mkdir()
    (tmp_path / "captioner/models/__init__.py").write_text("")
    (tmp_path / "captioner/training").mkdir()
    (tmp_path / "captioner/training/__init__.py").write_text("")
    (tmp_path / "captioner/models/sat.py").write_text("def f():\n    from captioner.training import trainer\n")
    (tmp_path / "features/extract.py").write_text("import captioner.data.karpathy\n")
    (tmp_path / "captioner/training/trainer.py").write_text("from captioner.models import sat\nimport features\n")
    found = violations(tmp_path)
    assert len(found) == 2, found
    assert "captioner/models/sat.py:2: imports captioner.training" in found[0] + found[1]
    assert any("features/extract.py:1" in line and "never import captioner" in line for line in found)
