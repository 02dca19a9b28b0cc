"""Root tier: real root in the initial user namespace (sandboxes without a user namespace).

The process-search and rootfs helpers are shared with the rootless tier
(tests/nsbx_test_helpers.py).
"""

from __future__ import annotations

import pytest
from nsbx_test_helpers import cli, data, marker, procs, sleep_marker, static_probe  # noqa: F401


@pytest.fixture(autouse=True)
def _tier(real_root):
    """Every test here needs real root in the initial user namespace."""
