"""Regressions that need a real spawn to show: command lookup on PATH."""

from __future__ import annotations

import os

import pytest

import nsbox


def _real_root() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return os.geteuid() == 0 and f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def test_fixed_not_found_with_an_unsearchable_path_dir(tmp_path):
    if not _real_root():
        pytest.skip("needs real root to make a directory the sandbox cannot search")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    os.chown(locked, 65534, 65534)  # owned by an id the sandbox does not map
    with pytest.raises(nsbox.CommandNotFoundError):
        nsbox.run(["nsbox-no-such-command-xyz"], mounts=[nsbox.Bind(str(tmp_path), "/nsbox-t")],
                  env={"PATH": "/nsbox-t/locked:/usr/bin:/bin"})
