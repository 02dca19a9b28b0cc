import pytest


@pytest.fixture(autouse=True)
def _tier(real_root):
    """Every test here needs real root in the initial user namespace."""
