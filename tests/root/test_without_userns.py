"""Real root: sandboxes without a user namespace, identity switching, the same filesystem."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess

import pytest
from nsbx_test_helpers import uniq

import nsbox

NO_USERNS = frozenset({"mount", "pid", "uts", "ipc", "net"})
LINKS = {"user": "user", "mount": "mnt", "pid": "pid", "uts": "uts", "ipc": "ipc", "net": "net",
         "cgroup": "cgroup"}


def run(script: str, **kw) -> nsbox.Result:
    kw.setdefault("namespaces", NO_USERNS)
    return nsbox.run(["sh", "-c", script], capture_output=True, text=True, **kw)


def ok(script: str, **kw) -> str:
    r = run(script, **kw)
    assert r.returncode == 0, (r.returncode, r.stderr)
    return r.stdout





# -- namespaces without a user namespace ------------------------------------------------


def test_runs_without_user_namespace():
    script = "; ".join(f"readlink /proc/self/ns/{link}" for link in LINKS.values())
    inside = dict(zip(LINKS, ok(script).split(), strict=True))
    for name, link in LINKS.items():
        host = os.readlink(f"/proc/self/ns/{link}")
        if name in NO_USERNS:
            assert inside[name] != host, name
        else:
            assert inside[name] == host, name


def test_real_root_inside():
    assert ok("id -u; id -g") == "0\n0\n"
    assert ok("cat /proc/self/uid_map").split() == ["0", "0", "4294967295"]
    # Real root keeps its capabilities (CapEff all set).
    caps = dict(line.split(":", 1) for line in ok("cat /proc/self/status").splitlines())
    assert int(caps["CapEff"].strip(), 16) != 0


def test_pid_uts_net_isolation_without_userns():
    assert ok("echo $$") == "2\n"
    assert ok("for p in /proc/[0-9]*; do echo ${p#/proc/}; done").split() == ["1", "2"]
    before = socket.gethostname()
    assert ok("hostname", hostname="nsbx-root") == "nsbx-root\n"
    assert ok("hostname nsbx-changed 2>/dev/null; hostname").strip() in ("nsbx-changed", before)
    assert socket.gethostname() == before
    devs = ok("cat /proc/net/dev").splitlines()[2:]
    assert {line.split(":")[0].strip() for line in devs} == {"lo"}


def test_cgroup_namespace_with_real_root():
    lines = ok("cat /proc/self/cgroup", namespaces=NO_USERNS | {"cgroup"}).splitlines()
    assert all(line.rsplit(":", 1)[1] == "/" for line in lines)


def test_only_some_namespaces():
    r = run("readlink /proc/self/ns/mnt /proc/self/ns/pid /proc/self/ns/net; echo $$",
            namespaces={"mount", "pid"}, network="host")
    mnt, pid, net, me = r.stdout.split()
    assert mnt != os.readlink("/proc/self/ns/mnt")
    assert pid != os.readlink("/proc/self/ns/pid")
    assert net == os.readlink("/proc/self/ns/net")
    assert me == "2"


def test_without_pid_namespace_the_command_has_a_host_pid(sleep_marker, procs):
    r = run("echo $$", namespaces={"mount", "uts", "ipc", "net"})
    assert r.returncode == 0 and int(r.stdout) > 2
    # kill still ends the command
    with nsbox.Sandbox(["sleep", sleep_marker], namespaces={"mount", "net"}) as box:
        assert procs.wait_present(sleep_marker, count=2)  # init's argv and sleep's
        box.kill()
        assert box.wait(timeout=20) == -signal.SIGKILL
    assert procs.wait_gone(sleep_marker, timeout=5) == []


# -- identity without a user namespace ------------------------------------------------------


def test_uid_gid_switch():
    assert ok("id -u; id -g; id -G", uid=65534, gid=65534) == "65534\n65534\n65534\n"


def test_uid_only_switch_drops_groups():
    assert ok("id -u; id -g; id -G", uid=65534) == "65534\n0\n0\n"


def test_switched_identity_is_unprivileged():
    r = run("hostname nope", uid=65534, gid=65534)
    assert r.returncode != 0
    caps = dict(line.split(":", 1) for line in
                ok("cat /proc/self/status", uid=65534, gid=65534).splitlines())
    assert int(caps["CapEff"].strip(), 16) == 0


def test_switched_identity_writes_tmp_and_owns_files(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    tmp_path.chmod(0o755)
    target = f"/mnt/{uniq()}"  # not at tmp_path itself: its parents may be 0700
    got = ok(f"echo x > /tmp/f && cat /tmp/f && touch {target}/made",
             uid=65534, gid=65534, mounts=[nsbox.Bind(str(shared), target)])
    assert got == "x\n"
    st = (shared / "made").stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)


def test_switched_identity_cannot_read_root_only_files(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s")
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    target = f"/mnt/{uniq()}"
    assert ok(f"cat {target}/secret", mounts=[nsbox.Bind(str(tmp_path), target)]) == "s"
    r = run(f"cat {target}/secret", uid=65534, mounts=[nsbox.Bind(str(tmp_path), target)])
    assert r.returncode != 0 and "Permission denied" in r.stderr


def test_cli_uid_without_userns():
    r = subprocess.run([*_cli(), "--namespaces", "mount,pid,uts,ipc,net", "--uid", "65534",
                        "--gid", "65534", "--", "sh", "-c", "id -u; id -g"],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"65534\n65534\n"


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "nsbox", "run"]


# -- the filesystem, the same as with a user namespace ----------------------------------------


@pytest.mark.parametrize("target", ["/etc/nsbx-ro-probe", "/nsbx-ro-probe"])
def test_root_still_read_only(target):
    r = run(f"echo x > {target}")
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    assert not os.path.exists(target)


def test_read_only_root_cannot_be_remounted_read_write():
    # Only the remount is tried: nothing is written to the host even if it succeeds.
    r = run("mount -o remount,bind,rw / 2>/dev/null && echo REMOUNTED")
    assert "REMOUNTED" not in r.stdout


def test_tmp_and_dev():
    got = ok("ls -A /tmp; stat -f -c %T /tmp; echo x > /tmp/f && cat /tmp/f; "
             "echo y > /dev/null && ls /dev/null /dev/zero /dev/urandom /dev/tty >/dev/null "
             "&& echo devok")
    assert got == "tmpfs\nx\ndevok\n"


def test_bind_rw_and_ro(data):
    target = f"/mnt/{uniq()}"
    got = ok(f"cat {target}/hello.txt; echo w > {target}/new",
             mounts=[nsbox.Bind(str(data), target)])
    assert got == "hello from the host\n"
    assert (data / "new").read_text() == "w\n"
    r = run(f"echo w > {target}/other", mounts=[nsbox.Bind(str(data), target, readonly=True)])
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    assert not (data / "other").exists()
    assert not os.path.exists(target)


def test_readonly_bind_cannot_be_remounted_read_write(data):
    target = f"/mnt/{uniq()}"
    run(f"mount -o remount,bind,rw {target} 2>/dev/null; echo changed > {target}/hello.txt",
        mounts=[nsbox.Bind(str(data), target, readonly=True)])
    assert (data / "hello.txt").read_text() == "hello from the host\n"


def test_tmpfs_size():
    r = run("head -c 3145728 /dev/zero > /scratch/big", mounts=[nsbox.Tmpfs("/scratch",
                                                                            size="1M")])
    assert r.returncode != 0 and "No space left on device" in r.stderr


def test_new_targets_only_in_sandbox_view(data):
    top = uniq("nsbx-new")
    mnt = uniq()
    before_top, before_mnt = sorted(os.listdir("/")), sorted(os.listdir("/mnt"))
    got = ok(f"cat /{top}/sub/hello.txt; ls -A /mnt",
             mounts=[nsbox.Bind(str(data), f"/{top}/sub"), nsbox.Tmpfs(f"/mnt/{mnt}")])
    lines = got.splitlines()
    assert lines[0] == "hello from the host"
    assert sorted(lines[1:]) == sorted([*before_mnt, mnt])
    assert sorted(os.listdir("/")) == before_top
    assert sorted(os.listdir("/mnt")) == before_mnt


def test_rootfs_without_userns(tmp_path, static_probe):
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    exe = root / "bin" / "probe"
    exe.write_bytes(open(static_probe.path, "rb").read())
    exe.chmod(0o755)
    r = nsbox.run(static_probe.argv("/bin/probe", "ls", "/"), rootfs=str(root),
                  namespaces=NO_USERNS, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == ["bin", "dev", "proc", "tmp"]
    assert sorted(os.listdir(root)) == ["bin"]


def test_host_mount_table_unchanged(data):
    with open("/proc/self/mountinfo") as f:
        before = f.read()
    ok("true", mounts=[nsbox.Bind(str(data), "/mnt/nsbx-x"), nsbox.Tmpfs("/nsbx-y/z")])
    with open("/proc/self/mountinfo") as f:
        assert f.read() == before


# -- lifetime -----------------------------------------------------------------------------


def test_timeout_leaves_nothing(procs, marker, sleep_marker):
    with pytest.raises(subprocess.TimeoutExpired):
        nsbox.run(["sh", "-c", f"sleep {sleep_marker} & sleep {sleep_marker}; :", marker],
                  namespaces=NO_USERNS, timeout=0.5, capture_output=True)
    assert procs.marked(marker, sleep_marker) == []


def test_exec_errors_without_userns():
    with pytest.raises(nsbox.CommandNotFoundError):
        nsbox.run(["/nsbx-no-such-command"], namespaces=NO_USERNS)
    with pytest.raises(nsbox.CommandNotExecutableError):
        nsbox.run(["/etc/passwd"], namespaces=NO_USERNS)
    with pytest.raises(nsbox.MountError) as info:
        nsbox.run(["true"], namespaces=NO_USERNS,
                  mounts=[nsbox.Bind("/nsbx-no-such-source", "/mnt/x")])
    assert "/nsbx-no-such-source" in str(info.value)


def test_many_runs_without_userns_leak_nothing(procs):
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/mountinfo") as f:
        mounts = sum(1 for _ in f)
    kids = procs.children()
    for i in range(100):
        kw = {"uid": 65534, "gid": 65534} if i % 2 else {}
        assert run(f"exit {i % 5}", **kw).returncode == i % 5
    assert procs.children() == kids
    assert len(os.listdir("/proc/self/fd")) == fds
    with open("/proc/self/mountinfo") as f:
        assert sum(1 for _ in f) == mounts


def test_setid_stage_failure_is_a_privilege_drop_error():
    # Only without a user namespace does the child call setresuid/setresgid.
    with pytest.raises(nsbox.PrivilegeDropError) as info:
        nsbox.run(["/bin/true"], namespaces=NO_USERNS, uid=0, gid=0,
                  _debug_fail=("setid", errno.EPERM))
    exc = info.value
    assert (exc.stage, exc.errno) == ("setid", errno.EPERM)
    assert str(exc).startswith("nsbox: setup failed at setid") and "\n" not in str(exc)
