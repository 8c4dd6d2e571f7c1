import pytest

from tests.training_helpers import make_caption_set


@pytest.fixture(scope="session")
def caption_set(tmp_path_factory):
    """A tiny captioning set (grid store + prepared text) that training tests read and never modify."""
    return make_caption_set(tmp_path_factory.mktemp("caption_set"))
