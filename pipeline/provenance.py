"""Code fingerprints for Snakemake rules.

Snakemake reruns a job when its shell command changes, but it cannot see the Python modules that
command imports (it would keep results made by old code). Each rule therefore gets a parameter
``code=code_hash(root, "module", ...)``: a digest of the modules it runs and everything they import
from this project, transitively, found by reading their ``import`` statements. The digest covers the
syntax tree without docstrings, so editing code reruns the rule while docstrings, comments and formatting do not.

Imports done at run time by name (``importlib.import_module``) are invisible here on purpose: the
model registry imports models lazily, the command lines import only the command being run, and the feature
stage picks its extractor module by name; each rule lists those modules explicitly, so editing one model's file
reruns only that model's jobs, and editing the region detector leaves the grid features alone.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PROJECT_PACKAGES = ("pipeline", "captioner", "features")


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _drop_docstrings(tree: ast.AST) -> None:
    """Remove the docstring of the module and of every class and function (they document, they do not run)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:]


@lru_cache(maxsize=None)
def _parse(path: Path, mtime_ns: int) -> tuple[str, tuple[str, ...]]:
    """AST digest of a file and the project modules it imports (cached by path and mtime)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imports: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imports.append(node.module)
            imports += [f"{node.module}.{alias.name}" for alias in node.names]
    _drop_docstrings(tree)
    digest = hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()
    return digest, tuple(sorted(set(i for i in imports if i.split(".")[0] in PROJECT_PACKAGES)))


def project_modules(root: str | Path, *modules: str) -> dict[str, Path]:
    """The given modules, their parent packages, and every project module they import, transitively."""
    root = Path(root)
    found: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in found:
            continue
        path = _module_file(root, module)
        if path is None:
            continue  # "from pkg import name" where name is not a module
        found[module] = path
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # package __init__ files run too
        todo += _parse(path, path.stat().st_mtime_ns)[1]
    missing = [m for m in modules if m not in found]
    if missing:
        raise ModuleNotFoundError(f"no such project module under {root}: {', '.join(missing)}")
    return found


def code_hash(root: str | Path, *modules: str) -> str:
    files = project_modules(root, *modules)
    digest = hashlib.sha256()
    for module in sorted(files):
        path = files[module]
        digest.update(module.encode())
        digest.update(_parse(path, path.stat().st_mtime_ns)[0].encode())
    return digest.hexdigest()[:16]


def code_fingerprint(root: str | Path, *modules: str) -> str:
    """A rule's ``code`` parameter: each module it runs with the digest of its own code and everything it imports
    (``captioner.evaluation.decode@ebdb3733 captioner.models.sat@12ab90ef``), so that Snakemake's rerun reason
    ("Params have changed ... before: ... now: ...") shows which of the job's modules changed."""
    return " ".join(f"{module}@{code_hash(root, module)[:8]}" for module in modules)
