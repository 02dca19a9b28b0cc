"""Rootless tier: real sandboxes, needing only user namespaces.

These tests must pass as root, under `unshare -r` and as an unprivileged user
(uid 65534): they never write to root-owned host paths, create their files
under tmp_path, and find processes only by unique markers in their argv.
The helpers live in tests/nsbx_test_helpers.py (tests/conftest.py puts tests/
on sys.path).
"""

from __future__ import annotations

import pytest
from nsbx_test_helpers import cli, data, marker, procs, sleep_marker, static_probe  # noqa: F401


@pytest.fixture(autouse=True)
def _tier(userns):
    """Every test here starts real sandboxes: user namespaces must work."""

