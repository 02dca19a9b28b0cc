"""The exception tree, setup_error's stage -> exception table, messages, pickling."""

from __future__ import annotations

import errno
import os
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

import nsbox
from nsbox._errors import (
    STAGE_NAMES,
    STAGE_NUMBERS,
    CommandNotExecutableError,
    CommandNotFoundError,
    ExecError,
    LimitError,
    MountError,
    NetworkSetupError,
    NsboxError,
    NsboxInternalError,
    PrivilegeDropError,
    SandboxSetupError,
    SpawnError,
    SpecError,
    UnsupportedError,
    clone_error,
    setup_error,
)
from nsbox._plan import MNT_BIND, PlanMount
from nsbox._spec import Bind, Tmpfs

EXPECTED_CLASS = {
    "mount-private": MountError,
    "root": MountError,
    "mount": MountError,
    "pivot-root": MountError,
    "loopback": NetworkSetupError,
    "network": NetworkSetupError,
    "setid": PrivilegeDropError,
    "caps": PrivilegeDropError,
    "cgroup": LimitError,
    "rlimit": LimitError,
}
ERRNOS = st.sampled_from(sorted(errno.errorcode))


def stage(name: str) -> int:
    return STAGE_NUMBERS[name]


def check_message(exc: BaseException, *needles: str) -> None:
    msg = str(exc)
    assert msg.startswith("nsbox: "), msg
    assert "\n" not in msg and "\r" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


# -- the tree ----------------------------------------------------------------------------


def test_tree():
    assert issubclass(SpecError, ValueError) and issubclass(SpecError, NsboxError)
    for cls in (UnsupportedError, SpawnError, SandboxSetupError):
        assert issubclass(cls, OSError) and issubclass(cls, NsboxError)
    for cls in (MountError, NetworkSetupError, LimitError, PrivilegeDropError, ExecError):
        assert issubclass(cls, SandboxSetupError)
    assert issubclass(CommandNotFoundError, ExecError)
    assert issubclass(CommandNotExecutableError, ExecError)
    assert CommandNotFoundError.exit_code == 127 and CommandNotExecutableError.exit_code == 126
    assert issubclass(NsboxInternalError, NsboxError)
    assert not issubclass(NsboxInternalError, (OSError, ValueError))
    # Public names
    for cls in (SpecError, UnsupportedError, SpawnError, SandboxSetupError, MountError,
                NetworkSetupError, LimitError, PrivilegeDropError, ExecError,
                CommandNotFoundError, CommandNotExecutableError, NsboxInternalError):
        assert getattr(nsbox, cls.__name__) is cls


def test_stage_table_is_a_bijection():
    assert sorted(STAGE_NAMES) == list(range(len(STAGE_NAMES)))
    assert {v: k for k, v in STAGE_NAMES.items()} == STAGE_NUMBERS
    assert STAGE_NAMES[0] == "none"


def test_sandbox_setup_error_is_an_oserror_with_errno():
    exc = setup_error(stage("mount"), errno.ENOENT, Bind("/srv/data", "/data"))
    assert isinstance(exc, OSError) and exc.errno == errno.ENOENT
    assert exc.strerror == str(exc)
    with pytest.raises(OSError) as info:
        raise exc
    assert info.value.errno == errno.ENOENT


# -- setup_error -------------------------------------------------------------------------


def test_exec_enoent_is_command_not_found():
    exc = setup_error(stage("exec"), errno.ENOENT, command="/no/such")
    assert type(exc) is CommandNotFoundError and exc.exit_code == 127
    assert (exc.stage, exc.errno, exc.op) == ("exec", errno.ENOENT, "/no/such")
    check_message(exc, "/no/such", "not found")


def test_exec_eacces_is_command_not_executable():
    exc = setup_error(stage("exec"), errno.EACCES, command="/etc/passwd")
    assert type(exc) is CommandNotExecutableError and exc.exit_code == 126
    assert (exc.stage, exc.errno) == ("exec", errno.EACCES)
    check_message(exc, "/etc/passwd", os.strerror(errno.EACCES))


@given(ERRNOS.filter(lambda e: e != errno.ENOENT))
def test_other_exec_errors_are_not_executable(err):
    exc = setup_error(stage("exec"), err, command="cmd")
    assert type(exc) is CommandNotExecutableError and exc.exit_code == 126
    assert exc.errno == err
    check_message(exc, "cmd", os.strerror(err))


def test_mount_error_names_the_mount():
    exc = setup_error(stage("mount"), errno.ENOENT, Bind("/srv/data", "/data"))
    assert type(exc) is MountError
    assert str(exc) == ("nsbox: setup failed at mount (bind /srv/data -> /data): "
                        "No such file or directory")
    exc = setup_error(stage("mount"), errno.EINVAL, Tmpfs("/scratch", size="1M"))
    check_message(exc, "tmpfs /scratch size=1048576", os.strerror(errno.EINVAL))
    exc = setup_error(stage("mount"), errno.EPERM,
                      PlanMount(MNT_BIND, "/x", src="/y", origin=Bind("/y", "/x", readonly=True)))
    check_message(exc, "ro-bind /y -> /x")


def test_loopback_is_network_setup_error():
    exc = setup_error(stage("loopback"), errno.EPERM)
    assert type(exc) is NetworkSetupError and exc.stage == "loopback"
    check_message(exc, "loopback", os.strerror(errno.EPERM))


@given(st.sampled_from(sorted(set(STAGE_NAMES.values()) - {"exec"})), ERRNOS,
       st.one_of(st.none(), st.just("cwd /w"), st.builds(Bind, st.just("/a"), st.just("/b"))))
def test_setup_stages(name, err, op):
    exc = setup_error(stage(name), err, op, command="cmd")
    assert type(exc) is EXPECTED_CLASS.get(name, SandboxSetupError)
    assert (exc.stage, exc.errno, exc.op) == (name, err, op)
    check_message(exc, f"at {name}", os.strerror(err))
    if op is not None:
        check_message(exc, op.describe() if isinstance(op, Bind) else op)


def test_unknown_stage_still_maps():
    for number in (-1, len(STAGE_NAMES), 99):
        exc = setup_error(number, errno.EIO)
        assert type(exc) is SandboxSetupError and exc.stage == f"stage-{number}"
        check_message(exc, f"stage-{number}")


def test_errno_zero_or_negative_still_one_line():
    check_message(setup_error(stage("mount"), 0), "mount")
    check_message(setup_error(stage("mount"), -5), "mount")


# -- clone_error -----------------------------------------------------------------------


def test_clone_errors_with_hints_are_unsupported():
    for err in (errno.EPERM, errno.ENOSPC, errno.EUSERS, errno.EINVAL):
        exc = clone_error(err, frozenset({"user", "net"}))
        assert type(exc) is UnsupportedError and exc.errno == err and exc.hint
        check_message(exc, "net,user", os.strerror(err), exc.hint)


def test_other_clone_errors_are_spawn_errors():
    for err, ns in ((errno.EAGAIN, {"user"}), (errno.ENOMEM, {"user"}), (errno.EPERM, set())):
        exc = clone_error(err, frozenset(ns))
        assert type(exc) is SpawnError and exc.errno == err
        check_message(exc, "clone", os.strerror(err))


# -- pickling ---------------------------------------------------------------------------


def _examples():
    yield SpecError("hostname 'a_b' is not a valid host name")
    yield NsboxInternalError("nsbox: broken")
    yield SpawnError(errno.ECHILD, "nsbox: the sandbox died during setup")
    yield clone_error(errno.EPERM, frozenset({"user"}))
    yield clone_error(errno.EAGAIN, frozenset({"user"}))
    yield setup_error(stage("exec"), errno.ENOENT, command="/no/such")
    yield setup_error(stage("exec"), errno.EACCES, command="/etc/passwd")
    yield setup_error(stage("mount"), errno.ENOENT, Bind("/srv", "/data", readonly=True))
    yield setup_error(stage("mount"), errno.ENOENT,
                      PlanMount(MNT_BIND, "/x", src="/y", origin=Bind("/y", "/x")))
    yield setup_error(stage("loopback"), errno.EPERM)
    yield setup_error(stage("setid"), errno.EPERM)
    yield setup_error(stage("chdir"), errno.ENOENT, "cwd /nope")
    yield LimitError(errno.EINVAL, "nsbox: setup failed at rlimit", stage="none", op=None)


def test_exceptions_pickle_round_trip():
    for exc in _examples():
        for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
            back = pickle.loads(pickle.dumps(exc, protocol=proto))
            assert type(back) is type(exc)
            assert str(back) == str(exc)
            assert back.args == exc.args
            if isinstance(exc, OSError):
                assert back.errno == exc.errno
            for attr in ("stage", "op", "hint", "message", "exit_code"):
                if hasattr(exc, attr):
                    assert getattr(back, attr) == getattr(exc, attr), (exc, attr)


@given(st.text(st.characters(codec="utf-8", exclude_characters="/\0"), max_size=12).filter(
    lambda p: p not in (".", "..")),
       st.sampled_from(["mount", "exec", "chdir"]), ERRNOS)
def test_messages_stay_one_line(path, name, err):
    # Paths may hold newlines and other control characters: messages escape them.
    op = Bind("/" + path, "/c")
    check_message(setup_error(stage(name), err, op, command=path), "nsbox: ")


def test_messages_escape_newlines():
    exc = setup_error(STAGE_NUMBERS["mount"], errno.ENOENT, Bind("/a\nb", "/c"))
    check_message(exc, "/a\\x0ab")
    check_message(setup_error(STAGE_NUMBERS["exec"], errno.ENOENT, command="/x\ny"), "/x\\x0ay")


@pytest.mark.parametrize("sep", ["\x85", "\u2028"])
def test_fixed_messages_one_line_for_unicode_line_breaks(sep):
    exc = setup_error(STAGE_NUMBERS["exec"], errno.ENOENT, command=f"/x{sep}y")
    assert len(str(exc).splitlines()) == 1
