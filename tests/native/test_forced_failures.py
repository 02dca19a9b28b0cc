"""Every setup stage forced to fail once (the `_debug_fail` hook of the C core).

Each failure must surface as the right exception type with `.stage`, `.errno`
and a one-line message naming the stage (and the spec element when there is
one), and leave nothing behind: the autouse leak check in tests/conftest.py
sees fds, child processes and mounts.
"""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nsbox
from nsbox._errors import STAGE_NAMES, STAGE_NUMBERS, setup_error

ALL_BUT_USER = [n for n in nsbox.NAMESPACES if n != "user"]

# Which options make a stage run at all, and what its failure is.
STAGES = {
    "parent-death": ({}, nsbox.SandboxSetupError, None),
    "setgroups": ({}, nsbox.SandboxSetupError, None),
    "uid-map": ({}, nsbox.SandboxSetupError, None),
    "gid-map": ({}, nsbox.SandboxSetupError, None),
    "mount-private": ({}, nsbox.MountError, None),
    "root": ({}, nsbox.MountError, "root /"),
    "mount": ({}, nsbox.MountError, "minimal /dev"),
    "pivot-root": ({}, nsbox.MountError, None),
    "hostname": ({"hostname": "box"}, nsbox.SandboxSetupError, "hostname box"),
    "loopback": ({}, nsbox.NetworkSetupError, None),
    "network": ({"network": "t-forced"}, nsbox.NetworkSetupError, "creating the veth pair"),
    "setid": ({"namespaces": ALL_BUT_USER, "uid": 0, "gid": 0}, nsbox.PrivilegeDropError, None),
    "caps": ({}, nsbox.PrivilegeDropError, None),
    "fds": ({}, nsbox.SandboxSetupError, "stdio and pass_fds"),
    "chdir": ({"cwd": "/"}, nsbox.SandboxSetupError, "cwd /"),
    "exec-init": ({}, nsbox.SandboxSetupError, None),
    "init": ({}, nsbox.SandboxSetupError, None),
    "rlimit": ({"limits": nsbox.Limits(nofile=64)}, nsbox.LimitError, "nofile=64"),
    "cgroup": ({"limits": nsbox.Limits(pids=64)}, nsbox.LimitError, "cgroup"),
}


# The setid stage runs only without a user namespace, and the cgroup stage
# only with a cgroup, both of which need real root: tests/root/ forces them.
ROOT_STAGES = {"setid", "cgroup"}
USERNS_STAGES = sorted(set(STAGES) - ROOT_STAGES)


def check_message(exc: BaseException, *needles: str) -> None:
    msg = str(exc)
    assert msg.startswith("nsbox: ") and len(msg.splitlines()) == 1, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_every_stage_is_covered():
    assert set(STAGE_NAMES.values()) == {"none", "clone", "exec", *STAGES}


@pytest.mark.parametrize("stage", USERNS_STAGES)
def test_stage_failure(stage):
    options, cls, op_text = STAGES[stage]
    with pytest.raises(nsbox.SandboxSetupError) as info:
        nsbox.run(["/bin/true"], _debug_fail=(stage, errno.EPERM), **options)
    exc = info.value
    assert type(exc) is cls
    assert isinstance(exc, OSError) and isinstance(exc, nsbox.NsboxError)
    assert (exc.stage, exc.errno) == (stage, errno.EPERM)
    check_message(exc, f"at {stage}", os.strerror(errno.EPERM), *([op_text] if op_text else []))


@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOSPC, errno.EUSERS, errno.EINVAL])
def test_clone_failure_with_a_hint_is_unsupported(err):
    with pytest.raises(nsbox.UnsupportedError) as info:
        nsbox.run(["/bin/true"], _debug_fail=("clone", err))
    assert info.value.errno == err and info.value.hint
    check_message(info.value, "cannot create namespaces", os.strerror(err))


def test_clone_failure_without_a_hint_is_a_spawn_error():
    with pytest.raises(nsbox.SpawnError) as info:
        nsbox.run(["/bin/true"], _debug_fail=("clone", errno.EAGAIN))
    assert info.value.errno == errno.EAGAIN
    check_message(info.value, "clone", os.strerror(errno.EAGAIN))


def test_exec_enoent_is_command_not_found():
    with pytest.raises(nsbox.CommandNotFoundError) as info:
        nsbox.run(["/bin/true"], _debug_fail=("exec", errno.ENOENT))
    exc = info.value
    assert (exc.stage, exc.errno, exc.exit_code) == ("exec", errno.ENOENT, 127)
    check_message(exc, "/bin/true")


@pytest.mark.parametrize("err", [errno.EACCES, errno.EPERM, errno.ENOEXEC])
def test_exec_other_errors_are_not_executable(err):
    with pytest.raises(nsbox.CommandNotExecutableError) as info:
        nsbox.run(["/bin/true"], _debug_fail=("exec", err))
    exc = info.value
    assert (exc.stage, exc.errno, exc.exit_code) == ("exec", err, 126)
    check_message(exc, "/bin/true", os.strerror(err))


def test_mount_failure_names_a_user_mount():
    # Without a pid namespace and with /dev and /tmp replaced, mount 0 is the user's.
    dev = nsbox.Tmpfs("/dev", size="1M")
    with pytest.raises(nsbox.MountError) as info:
        nsbox.run(["/bin/true"], mounts=[dev, nsbox.Tmpfs("/tmp")],
                  namespaces=["user", "mount", "net"], _debug_fail=("mount", errno.ENOSPC))
    assert info.value.errno == errno.ENOSPC
    assert info.value.op == dev
    check_message(info.value, "tmpfs /dev size=1048576", os.strerror(errno.ENOSPC))


def test_failure_with_pipes_closes_them():
    with pytest.raises(nsbox.MountError):
        nsbox.run(["/bin/true"], capture_output=True, input=b"x",
                  _debug_fail=("pivot-root", errno.EINVAL))
    with pytest.raises(nsbox.SandboxSetupError), nsbox.Sandbox(
        ["/bin/true"], stdin=nsbox.PIPE, stdout=nsbox.PIPE, stderr=nsbox.PIPE,
        _debug_fail=("init", errno.EMFILE),
    ):
        pass


def test_sandboxes_still_work_after_failures():
    for stage in ("mount", "init", "exec", "clone"):
        with pytest.raises(nsbox.NsboxError):
            nsbox.run(["/bin/true"], _debug_fail=(stage, errno.EIO))
    assert nsbox.run(["/bin/true"]).returncode == 0


FORCEABLE = sorted(set(STAGES) - ROOT_STAGES) + ["exec"]


@settings(max_examples=30)
@given(st.sampled_from(FORCEABLE), st.sampled_from(sorted(errno.errorcode)))
def test_any_errno_maps_like_setup_error(stage, err):
    options = STAGES.get(stage, ({},))[0]
    with pytest.raises(nsbox.SandboxSetupError) as info:
        nsbox.run(["/bin/true"], _debug_fail=(stage, err), **options)
    exc = info.value
    expected = setup_error(STAGE_NUMBERS[stage], err, command="/bin/true")
    assert type(exc) is type(expected)
    assert (exc.stage, exc.errno) == (stage, err)
    check_message(exc)
