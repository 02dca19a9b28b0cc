"""Values at the edges of what Spec accepts reach the C structs intact.

Each case is valid for Spec (or refused by it with SpecError); nsbox.run must
then give a result or an NsboxError, never OverflowError or
UnicodeEncodeError from packing the C structs.
"""

from __future__ import annotations

import os

import pytest

import nsbox

ALL_BUT_USER = [n for n in nsbox.NAMESPACES if n != "user"]


def real_root() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return os.geteuid() == 0 and f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def test_large_ids_with_a_user_namespace():
    # The map text carries the id: any id up to 2**32-2 works with a user namespace.
    result = nsbox.run(["/bin/sh", "-c", "id -u; id -g"], uid=2**31, gid=2**32 - 2,
                       capture_output=True, text=True)
    assert result.stdout.split() == [str(2**31), str(2**32 - 2)]


def test_large_ids_without_a_user_namespace():
    # setid_uid/gid carry ids beyond int32 (once an OverflowError in packing).
    if not real_root():
        with pytest.raises(nsbox.NsboxError):
            nsbox.run(["/bin/true"], uid=2**31, gid=2**31, namespaces=ALL_BUT_USER)
        return
    result = nsbox.run(["/bin/sh", "-c", "id -u; id -g"], uid=2**31, gid=2**32 - 2,
                       namespaces=ALL_BUT_USER, capture_output=True, text=True)
    assert result.stdout.split() == [str(2**31), str(2**32 - 2)]


def test_pass_fds_beyond_int32_are_spec_errors():
    with pytest.raises(nsbox.SpecError, match="pass_fds"):
        nsbox.run(["/bin/true"], pass_fds=[2**40])
    with pytest.raises(nsbox.SpecError, match="pass_fds"):
        nsbox.run(["/bin/true"], pass_fds=[2**31])


def test_unencodable_strings_are_spec_errors():
    for kwargs in ({"args": ["/bin/true", "\ud800"]},
                   {"args": ["/bin/true"], "env": {"A": "\ud800"}},
                   {"args": ["/bin/true"], "env": {"\udfff": "1"}},
                   {"args": ["/bin/true"], "cwd": "/\ud800"}):
        with pytest.raises(nsbox.SpecError):
            nsbox.run(**kwargs)


def test_surrogateescaped_bytes_reach_the_command():
    # Arguments that came from bytes (surrogateescape) are valid and arrive as those bytes.
    result = nsbox.run(["/bin/sh", "-c", 'printf %s "$1"', "sh", b"\xff\xfe".decode(
        "utf-8", "surrogateescape")], capture_output=True)
    assert result.stdout == b"\xff\xfe"


def test_mount_error_op_is_the_spec_element():
    bind = nsbox.Bind("/nonexistent-nsbox-src", "/x")
    with pytest.raises(nsbox.MountError) as info:
        nsbox.run(["/bin/true"], mounts=[bind])
    exc = info.value
    assert exc.op == bind
    assert (exc.stage, exc.errno) == ("mount", 2)
    assert str(exc) == ("nsbox: setup failed at mount (bind /nonexistent-nsbox-src -> /x): "
                        "No such file or directory")
