"""Command lookup on PATH inside the sandbox (real root: to make an unsearchable directory)."""

from __future__ import annotations

import os

import pytest

import nsbox


def test_not_found_with_an_unsearchable_path_dir(tmp_path):
    # execvpe would say EACCES (126); a command that exists nowhere is 127.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    os.chown(locked, 65534, 65534)  # owned by an id the sandbox does not map
    try:
        with pytest.raises(nsbox.CommandNotFoundError):
            nsbox.run(["nsbox-no-such-command-xyz"],
                      mounts=[nsbox.Bind(str(tmp_path), "/nsbox-t")],
                      env={"PATH": "/nsbox-t/locked:/usr/bin:/bin"})
    finally:
        # Later runs under `unshare -r` could not remove a directory of 65534's.
        locked.rmdir()
