"""The loaded native code is not older than its sources in csrc/."""

from __future__ import annotations

import os
import pathlib

import nsbox._nsbox_cffi
import pytest

from nsbox import _native

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"
BUILD_INPUTS = {".c", ".h", ".py"}  # not lint.sh and the like: they do not change the build


@pytest.fixture(autouse=True)
def _tier():
    """Needs the built module only, not user namespaces (overrides the tier's)."""


def test_compiled_code_is_newer_than_csrc():
    if not CSRC.is_dir():
        pytest.skip("csrc/ is not next to the tests (installed package)")
    built = {
        "compiled module": nsbox._nsbox_cffi.__file__,
        "nsbox-init": _native.INIT_PATH,
    }
    stale = []
    for what, path in built.items():
        mtime = os.stat(path).st_mtime_ns
        for src in sorted(p for p in CSRC.rglob("*") if p.suffix in BUILD_INPUTS):
            if src.stat().st_mtime_ns > mtime:
                stale.append(f"{src.relative_to(CSRC.parent)} is newer than the {what} {path}")
    assert not stale, "rebuild with pip install -e .\n" + "\n".join(stale)
