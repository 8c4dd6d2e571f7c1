import os

# one torch thread per test process: pytest-xdist's workers already fill the cores, so a second thread only spins
# waiting for one (gpu_check's smoke run: 28 CPU-s with two threads, 23 with one, alone; more under load). Set before
# torch is imported; subprocesses inherit it, and the workflow's jobs set their own from the config.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402

from tests.training_helpers import make_caption_set  # noqa: E402
from tests.workflow_helpers import copy_workflow, snakemake  # noqa: E402


def built_once(tmp_path_factory, name: str, build):
    """``build(folder)``'s result, made once per test session even under pytest-xdist: the first worker builds it in
    the session's shared temporary folder while the others wait on its lock, then every worker reads the same copy
    (the fixtures using this are read-only)."""
    shared = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:  # each worker's folder sits in the session's
        shared = shared.parent
    folder, done = shared / f"shared-{name}", shared / f"shared-{name}.done"
    with FileLock(str(shared / f"shared-{name}.lock")):
        if not done.exists():
            folder.mkdir(exist_ok=True)
            result = build(folder)
            done.write_text(str(result))
    return type(folder)(done.read_text())


@pytest.fixture(scope="session")
def caption_set(tmp_path_factory):
    """A tiny captioning set (grid store + prepared text) that training tests read and never modify."""
    return built_once(tmp_path_factory, "caption_set", make_caption_set)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """One complete local run of the DAG on the tiny config; tests work on copies of it and never modify it."""

    def run(folder):
        workdir = copy_workflow(folder / "project")
        snakemake(workdir)
        return workdir

    return built_once(tmp_path_factory, "finished_run", run)


def pytest_collection_modifyitems(items):
    """Longest files first, for pytest-xdist (make test runs it with --dist loadfile --no-loadscope-reorder, one
    file per worker at a time, in this order): the SLURM tests (one worker's ~10 minutes, mostly waiting), then the
    files with the most end-to-end (slow) tests; started last, either would be the run's tail. A stable sort: the
    tests of a file keep their order."""
    slow = {}
    for item in items:
        slow[item.fspath] = slow.get(item.fspath, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: (item.get_closest_marker("slurm") is None, -slow[item.fspath]))
