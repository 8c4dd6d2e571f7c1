import pytest

from tests.training_helpers import make_caption_set
from tests.workflow_helpers import copy_workflow, snakemake


@pytest.fixture(scope="session")
def caption_set(tmp_path_factory):
    """A tiny captioning set (grid store + prepared text) that training tests read and never modify."""
    return make_caption_set(tmp_path_factory.mktemp("caption_set"))


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """One complete local run of the DAG on the tiny config; tests work on copies of it and never modify it."""
    workdir = copy_workflow(tmp_path_factory.mktemp("tiny") / "project")
    snakemake(workdir)
    return workdir
