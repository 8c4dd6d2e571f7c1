from captioner.provenance import code_hash, project_modules


def make_package(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_follows_project_imports_transitively(tmp_path):
    make_package(tmp_path, {
        "captioner/__init__.py": "",
        "captioner/a.py": "import json\nfrom captioner import b\n",
        "captioner/b.py": "from features.store import X\n",
        "captioner/c.py": "VALUE = 3\n",
        "features/__init__.py": "",
        "features/store.py": "X = 1\n",
    })
    assert set(project_modules(tmp_path, "captioner.a")) == {
        "captioner", "captioner.a", "captioner.b", "features", "features.store"}


def test_code_edits_change_the_hash_comments_do_not(tmp_path):
    make_package(tmp_path, {"captioner/__init__.py": "", "captioner/a.py": "from captioner import b\n",
                            "captioner/b.py": "def f():\n    return 1\n", "captioner/c.py": "Y = 2\n"})
    before = code_hash(tmp_path, "captioner.a")
    (tmp_path / "captioner/b.py").write_text("def f():\n    return 1  # same code\n\n")
    assert code_hash(tmp_path, "captioner.a") == before
    (tmp_path / "captioner/b.py").write_text("def f():\n    return 2\n")
    assert code_hash(tmp_path, "captioner.a") != before
    changed = code_hash(tmp_path, "captioner.a")
    (tmp_path / "captioner/c.py").write_text("Y = 3\n")  # not imported by a
    assert code_hash(tmp_path, "captioner.a") == changed
