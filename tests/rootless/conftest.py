"""Rootless tier: real sandboxes, needing only user namespaces.

These tests must pass as root, under `unshare -r` and as an unprivileged user
(uid 65534): they never write to root-owned host paths, create their files
under tmp_path, and find processes only by unique markers in their argv.
The helpers live in nsbx_test_helpers.py beside this file (pytest runs with
--import-mode=importlib, which does not put test directories on sys.path).
"""

from __future__ import annotations

import pathlib
import sys

import pytest

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from nsbx_test_helpers import cli, marker, procs, sleep_marker, static_probe  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _tier(userns):
    """Every test here starts real sandboxes: user namespaces must work."""

