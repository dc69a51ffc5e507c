import pytest


@pytest.fixture(autouse=True)
def _tiny_tensors_one_thread(one_thread):
    """Model tests run tiny models: one intra-op thread (see tests/conftest.py)."""
    yield
