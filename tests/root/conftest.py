"""Root tier: real root in the initial user namespace (sandboxes without a user namespace).

The process-search and rootfs helpers are shared with the rootless tier
(tests/rootless/nsbx_test_helpers.py).
"""

from __future__ import annotations

import pathlib
import sys

import pytest

_HELPERS = str(pathlib.Path(__file__).resolve().parent.parent / "rootless")
if _HELPERS not in sys.path:
    sys.path.insert(0, _HELPERS)

from nsbx_test_helpers import marker, procs, sleep_marker, static_probe  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _tier(real_root):
    """Every test here needs real root in the initial user namespace."""
