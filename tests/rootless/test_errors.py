"""Typed errors from real sandboxes: exec failures, mount failures, invalid specs."""

from __future__ import annotations

import errno
import os

import pytest

import nsbox
from nsbox import _native


def test_missing_command_absolute():
    with pytest.raises(nsbox.CommandNotFoundError) as info:
        nsbox.run(["/nsbx-no-such-command"])
    exc = info.value
    assert isinstance(exc, OSError)
    assert isinstance(exc, nsbox.SandboxSetupError)
    assert isinstance(exc, nsbox.ExecError)
    assert isinstance(exc, nsbox.NsboxError)
    assert exc.errno == errno.ENOENT
    assert "/nsbx-no-such-command" in str(exc)


def test_missing_command_on_path():
    with pytest.raises(nsbox.CommandNotFoundError) as info:
        nsbox.run(["nsbx-no-such-command"], env={"PATH": "/usr/bin:/bin"})
    assert info.value.errno == errno.ENOENT
    assert "nsbx-no-such-command" in str(info.value)


def test_missing_command_is_caught_as_filenotfound_like_subprocess():
    # subprocess raises FileNotFoundError; code catching OSError keeps working.
    with pytest.raises(OSError):
        nsbox.run(["/nsbx-no-such-command"], capture_output=True)


def test_command_only_on_host_path_is_not_found_inside(tmp_path):
    exe = tmp_path / "nsbx-host-only"
    exe.write_text("#!/bin/sh\necho hi\n")
    exe.chmod(0o755)
    # tmp_path is not visible inside unless bound.
    with pytest.raises(nsbox.CommandNotFoundError):
        nsbox.run([str(exe)], mounts=[nsbox.Tmpfs(str(tmp_path))])


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc"])
def test_not_executable(path):
    with pytest.raises(nsbox.CommandNotExecutableError) as info:
        nsbox.run([path])
    exc = info.value
    assert isinstance(exc, OSError) and isinstance(exc, nsbox.ExecError)
    assert exc.errno == errno.EACCES
    assert path in str(exc)


def test_not_executable_file_of_ours(tmp_path):
    f = tmp_path / "noexec.sh"
    f.write_text("#!/bin/sh\necho hi\n")
    f.chmod(0o644)
    with pytest.raises(nsbox.CommandNotExecutableError):
        nsbox.run([str(f)], mounts=[nsbox.Bind(str(tmp_path))])


def test_script_with_missing_interpreter_is_an_exec_error(tmp_path):
    f = tmp_path / "badinterp"
    f.write_text("#!/nsbx-no-such-interpreter\n")
    f.chmod(0o755)
    with pytest.raises(nsbox.ExecError):
        nsbox.run([str(f)], mounts=[nsbox.Bind(str(tmp_path))])


def test_exec_error_leaves_nothing_behind(procs):
    kids = procs.children()
    for _ in range(20):
        with pytest.raises(nsbox.CommandNotFoundError):
            nsbox.run(["/nsbx-no-such-command"], capture_output=True)
    assert procs.children() == kids


def test_bind_missing_source_is_a_mount_error(tmp_path):
    missing = tmp_path / "nsbx-missing-source"
    with pytest.raises(nsbox.MountError) as info:
        nsbox.run(["true"], mounts=[nsbox.Bind(str(missing), "/mnt/x")])
    exc = info.value
    assert isinstance(exc, nsbox.SandboxSetupError) and isinstance(exc, OSError)
    assert exc.errno == errno.ENOENT
    assert str(missing) in str(exc)
    assert exc.stage == "mount"
    assert exc.op == nsbox.Bind(str(missing), "/mnt/x")


def test_mount_error_names_the_bind_among_others(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    missing = tmp_path / "nsbx-second-missing"
    with pytest.raises(nsbox.MountError) as info:
        nsbox.run(["true"], mounts=[nsbox.Bind(str(good), "/mnt/a"), nsbox.Tmpfs("/mnt/b"),
                                    nsbox.Bind(str(missing), "/mnt/c", readonly=True)])
    assert str(missing) in str(info.value)
    assert str(good) not in str(info.value)


def test_tmpfs_over_a_file_target_fails_typed():
    # /etc/hostname is a file on most hosts; a tmpfs needs a directory.
    if not os.path.isfile("/etc/passwd"):
        pytest.skip("no /etc/passwd")
    with pytest.raises(nsbox.MountError) as info:
        nsbox.run(["true"], mounts=[nsbox.Tmpfs("/etc/passwd")])
    assert "/etc/passwd" in str(info.value)


def test_rootfs_missing_is_a_mount_error(tmp_path):
    with pytest.raises(nsbox.MountError) as info:
        nsbox.run(["true"], rootfs=str(tmp_path / "nsbx-no-rootfs"))
    assert "nsbx-no-rootfs" in str(info.value)


def test_setup_error_is_picklable():
    import pickle

    with pytest.raises(nsbox.CommandNotFoundError) as info:
        nsbox.run(["/nsbx-no-such-command"])
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is nsbox.CommandNotFoundError
    assert again.errno == errno.ENOENT
    assert str(again) == str(info.value)


# -- invalid specs: raised before anything starts ----------------------------------------

INVALID = [
    dict(args=[]),
    dict(args=["true"], hostname="bad_name!"),
    dict(args=["true"], hostname="x" * 65),
    dict(args=["true"], hostname="-lead"),
    dict(args=["true"], cwd="relative/dir"),
    dict(args=["true"], cwd="/a/../b"),
    dict(args=["true\0x"]),
    dict(args=["true", "a\0b"]),
    dict(args=["true"], env={"A": "b\0c"}),
    dict(args=["true"], env={"A=B": "c"}),
    dict(args=["true"], env={"": "c"}),
    dict(args=["true"], network="Bridge"),
    dict(args=["true"], uid=-1),
    dict(args=["true"], gid=-5),
    dict(args=["true"], rootfs="relative"),
    dict(args=["true"], namespaces={"user", "bogus"}),
    dict(args=["true"], pass_fds=[-1]),
]


@pytest.mark.parametrize("kw", INVALID, ids=lambda kw: ",".join(f"{k}" for k in kw if k != "args")
                         or repr(kw["args"])[:20])
def test_invalid_spec_raises_before_spawning(kw, monkeypatch, procs):
    calls = []
    real_spawn = _native.spawn

    def spy(*a, **k):
        calls.append(a)
        return real_spawn(*a, **k)

    monkeypatch.setattr(_native, "spawn", spy)
    kids = procs.children()
    kw = dict(kw)
    args = kw.pop("args")
    with pytest.raises(nsbox.SpecError) as info:
        nsbox.run(args, **kw)
    assert isinstance(info.value, ValueError)
    assert calls == []
    assert procs.children() == kids


@pytest.mark.parametrize("mount", [
    lambda: nsbox.Bind("relative/src", "/mnt/x"),
    lambda: nsbox.Bind("/src", "relative"),
    lambda: nsbox.Bind("/src", "/"),
    lambda: nsbox.Tmpfs("/scratch", size="lots"),
    lambda: nsbox.Tmpfs("/scratch", size=0),
    lambda: nsbox.Tmpfs("/scratch", size=-1),
    lambda: nsbox.Tmpfs("/x/../y"),
])
def test_invalid_mounts_raise_spec_error(mount):
    with pytest.raises(nsbox.SpecError):
        mount()


def test_two_mounts_at_same_target(monkeypatch):
    monkeypatch.setattr(_native, "spawn", lambda *a, **k: pytest.fail("spawned"))
    with pytest.raises(nsbox.SpecError):
        nsbox.run(["true"], mounts=[nsbox.Tmpfs("/mnt/x"), nsbox.Tmpfs("/mnt/x")])


def test_sandbox_constructor_validates_too(monkeypatch):
    monkeypatch.setattr(_native, "spawn", lambda *a, **k: pytest.fail("spawned"))
    with pytest.raises(nsbox.SpecError):
        nsbox.Sandbox(["true"], hostname="no spaces allowed")


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError):
        nsbox.run(["true"], no_such_option=1)


def _closed_fd() -> int:
    fd = 987
    try:
        os.close(fd)
    except OSError:
        pass
    return fd


def test_bad_pass_fd_is_a_setup_error():
    with pytest.raises(nsbox.SandboxSetupError) as info:
        nsbox.run(["true"], pass_fds=[_closed_fd()])
    assert info.value.errno == errno.EBADF
    assert info.value.stage == "fds"


def test_bad_pass_fd_message_names_the_fd():
    fd = _closed_fd()
    with pytest.raises(nsbox.SandboxSetupError) as info:
        nsbox.run(["true"], pass_fds=[fd])
    assert str(fd) in str(info.value)
