import pytest


@pytest.fixture(autouse=True)
def _tier(userns):
    """Every test here starts real sandboxes: user namespaces must work."""
