from pipeline.provenance import code_hash, project_modules


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


def test_docstrings_do_not_change_the_hash_code_does(tmp_path):
    make_package(tmp_path, {"captioner/__init__.py": '"""Package."""\n',
                            "captioner/a.py": '"""Module."""\n\nclass A:\n    """Class."""\n\n    def f(self):\n'
                                              '        """Method."""\n        return "text"\n'})
    before = code_hash(tmp_path, "captioner.a")
    (tmp_path / "captioner/__init__.py").write_text('"""Another package docstring."""\n')
    (tmp_path / "captioner/a.py").write_text('"""Edited."""\n\nclass A:\n    """Edited."""\n\n    def f(self):\n'
                                             '        """Edited."""\n        return "text"\n')
    assert code_hash(tmp_path, "captioner.a") == before
    (tmp_path / "captioner/a.py").write_text('"""Edited."""\n\nclass A:\n    def f(self):\n        return "other"\n')
    assert code_hash(tmp_path, "captioner.a") != before  # a string that is code, not a docstring, counts
