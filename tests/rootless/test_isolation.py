"""Each namespace isolates what it should, and the default filesystem is as documented."""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import socket
import subprocess
import uuid

import pytest
from nsbx_test_helpers import SANDBOX_PYTHON

import nsbox

NS_LINKS = {"user": "user", "mount": "mnt", "pid": "pid", "uts": "uts", "ipc": "ipc",
            "net": "net", "cgroup": "cgroup"}


def out(args, **kw) -> str:
    r = nsbox.run(args, capture_output=True, text=True, **kw)
    assert r.returncode == 0, (r.returncode, r.stderr)
    return r.stdout


def sh(script: str, **kw) -> str:
    return out(["sh", "-c", script], **kw)


def ns_inside(**kw) -> dict[str, str]:
    script = "; ".join(f"readlink /proc/self/ns/{link}" for link in NS_LINKS.values())
    return dict(zip(NS_LINKS, sh(script, **kw).split(), strict=True))


def test_every_namespace_is_new_by_default():
    inside = ns_inside()
    for name, link in NS_LINKS.items():
        assert inside[name] != os.readlink(f"/proc/self/ns/{link}"), name


def test_network_host_shares_only_the_net_namespace():
    inside = ns_inside(network="host")
    assert inside["net"] == os.readlink("/proc/self/ns/net")
    for name in ("user", "mount", "pid", "uts", "ipc", "cgroup"):
        assert inside[name] != os.readlink(f"/proc/self/ns/{NS_LINKS[name]}"), name


def test_two_sandboxes_do_not_share_namespaces():
    # Both alive at once: a namespace's inode number may be reused once it is gone.
    script = "; ".join(f"readlink /proc/self/ns/{link}" for link in NS_LINKS.values())
    with nsbox.Sandbox(["sh", "-c", script + "; read x"], stdin=nsbox.PIPE,
                       stdout=nsbox.PIPE, text=True) as box:
        a = dict(zip(NS_LINKS, [box.stdout.readline().strip() for _ in NS_LINKS], strict=True))
        b = ns_inside()
        box.communicate("go\n", timeout=20)
    for name in NS_LINKS:
        assert a[name] != b[name], name


# -- pid --------------------------------------------------------------------------------


def test_command_is_pid_2_under_our_init():
    assert sh("echo $$") == "2\n"
    comm = out(["cat", "/proc/1/comm"]).strip()
    assert comm.startswith("nsbox-init")
    # init is a child of nobody inside the namespace; the command is its child.
    assert sh("cut -d' ' -f4 /proc/$$/stat") == "1\n"


def test_the_command_cannot_reach_its_inits_fds_or_ptrace_it():
    """init holds the caller's pidfd and its report pipe (a supervisor's status
    file too); the command, same uid inside, must not get at them."""
    code = (
        "import ctypes, os\n"
        "fds = os.listdir('/proc/1/fd')\n"
        "opened = []\n"
        "for fd in fds:\n"
        "    try:\n"
        "        os.close(os.open(f'/proc/1/fd/{fd}', os.O_RDONLY)); opened.append(fd)\n"
        "    except OSError:\n"
        "        pass\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "attached = libc.ptrace(16, 1, 0, 0)\n"  # PTRACE_ATTACH
        "print(len(fds), len(opened), attached, ctypes.get_errno())\n"
    )
    n, opened, attached, err = map(int, out([SANDBOX_PYTHON, "-c", code]).split())
    assert n >= 2 and opened == 0
    assert attached == -1 and err == 1  # EPERM


def test_proc_shows_only_sandbox_processes():
    # A glob, not ls: the shell starts no other process while listing.
    pids = sh("for p in /proc/[0-9]*; do echo ${p#/proc/}; done").split()
    assert sorted(int(p) for p in pids) == [1, 2]


def test_host_processes_are_invisible():
    me = os.getpid()
    r = nsbox.run(["test", "-e", f"/proc/{me}/cmdline"])
    assert r.returncode == 1
    assert nsbox.run(["test", "-e", "/proc/2/cmdline"]).returncode == 0


def test_proc_is_mounted_fresh():
    fs = sh("stat -f -c %T /proc")
    assert fs.strip() == "proc"


# -- uts --------------------------------------------------------------------------------


def test_hostname_option_sets_it():
    before = socket.gethostname()
    assert out(["hostname"], hostname="nsbx-box") == "nsbx-box\n"
    assert sh("cat /proc/sys/kernel/hostname", hostname="a.b-c.d") == "a.b-c.d\n"
    assert socket.gethostname() == before


def test_hostname_change_inside_does_not_reach_host():
    before = socket.gethostname()
    # Whether the command may rename its own uts namespace depends on the capabilities it
    # keeps; either way the host's name must not change.
    got = sh("hostname nsbx-changed-inside 2>/dev/null; hostname").strip()
    assert got in ("nsbx-changed-inside", before)
    assert socket.gethostname() == before


def test_default_hostname_is_the_hosts():
    # A new uts namespace starts as a copy of the host's.
    assert out(["hostname"]).strip() == socket.gethostname()


# -- net --------------------------------------------------------------------------------


def _interfaces(proc_net_dev: str) -> set[str]:
    return {line.split(":", 1)[0].strip() for line in proc_net_dev.splitlines()[2:]
            if ":" in line}


def test_only_loopback_and_it_is_up():
    assert _interfaces(out(["cat", "/proc/net/dev"])) == {"lo"}
    if shutil.which("ip"):
        link = out(["ip", "-o", "link", "show", "lo"])
        assert "UP" in link.split("<", 1)[1].split(">", 1)[0].split(",")
        assert "127.0.0.1/8" in out(["ip", "-o", "addr", "show", "lo"])
        assert "dev lo" in out(["ip", "route", "get", "127.0.0.1"])


def test_loopback_works():
    # A closed port on a working loopback refuses at once (a down lo would time out or
    # be unreachable): the kernel answered over 127.0.0.1 inside the sandbox.
    if not shutil.which("bash"):
        pytest.skip("bash (for /dev/tcp) not installed")
    r = nsbox.run(["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9"], capture_output=True,
                  text=True, timeout=30)
    assert r.returncode != 0
    assert "Connection refused" in r.stderr


def test_host_interfaces_invisible_and_visible_with_network_host():
    with open("/proc/self/net/dev") as f:
        host = _interfaces(f.read())
    assert _interfaces(out(["cat", "/proc/net/dev"], network="host")) == host
    assert _interfaces(out(["cat", "/proc/net/dev"])) == {"lo"}


# -- ipc --------------------------------------------------------------------------------


def _sysvipc_ids(text: str) -> set[str]:
    return {line.split()[1] for line in text.splitlines()[1:] if line.split()}


def test_sysv_ipc_is_private():
    if not (shutil.which("ipcmk") and shutil.which("ipcrm")):
        pytest.skip("ipcmk/ipcrm (util-linux) not installed")
    made = subprocess.run(["ipcmk", "-Q"], capture_output=True, text=True, check=True).stdout
    qid = made.split()[-1]
    try:
        with open("/proc/sysvipc/msg") as f:
            assert qid in _sysvipc_ids(f.read())
        inside = out(["cat", "/proc/sysvipc/msg"])
        assert _sysvipc_ids(inside) == set()  # a fresh ipc namespace has no objects
        # An object made inside stays inside (and goes with the namespace).
        made_inside = sh("ipcmk -Q >/dev/null && cat /proc/sysvipc/msg")
        assert len(_sysvipc_ids(made_inside)) == 1
    finally:
        subprocess.run(["ipcrm", "-q", qid], check=True)
    with open("/proc/sysvipc/msg") as f:
        assert qid not in _sysvipc_ids(f.read())


def test_posix_shm_is_private():
    # /dev/shm inside is a fresh tmpfs: a file made there is not the host's.
    name = f"nsbx-shm-{uuid.uuid4().hex}"
    assert sh(f"ls -A /dev/shm; echo x > /dev/shm/{name} && ls /dev/shm") == f"{name}\n"
    assert not os.path.exists(f"/dev/shm/{name}")


# -- user -------------------------------------------------------------------------------


def test_root_inside_by_default():
    assert out(["id", "-u"]) == "0\n"
    assert out(["id", "-g"]) == "0\n"
    uid_map = out(["cat", "/proc/self/uid_map"]).split()
    assert uid_map == ["0", str(os.geteuid()), "1"]
    gid_map = out(["cat", "/proc/self/gid_map"]).split()
    assert gid_map == ["0", str(os.getegid()), "1"]
    assert out(["cat", "/proc/self/setgroups"]).strip() == "deny"


def test_uid_and_gid_options():
    assert sh("id -u; id -g", uid=1000, gid=1000) == "1000\n1000\n"
    assert out(["cat", "/proc/self/uid_map"], uid=1000).split() == \
        ["1000", str(os.geteuid()), "1"]


def test_uid_only():
    assert sh("id -u; id -g", uid=4242) == "4242\n0\n"


def test_nonroot_identity_cannot_write_as_root(tmp_path):
    # uid 1000 inside has no capabilities: it cannot change its hostname.
    r = nsbox.run(["hostname", "nope"], uid=1000, gid=1000, capture_output=True)
    assert r.returncode != 0


def test_files_created_inside_are_owned_by_the_caller(tmp_path):
    d = tmp_path / "owned"
    d.mkdir()
    sh(f"touch {d}/f", mounts=[nsbox.Bind(str(d))])
    st = (d / "f").stat()
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())


# -- mount: the default filesystem ---------------------------------------------------------


@pytest.mark.parametrize("target", ["/etc/nsbx-ro-probe", "/nsbx-ro-probe", "/usr/nsbx-probe"])
def test_root_is_read_only(target):
    r = nsbox.run(["sh", "-c", f"echo x > {target}"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "Read-only file system" in r.stderr
    assert not os.path.exists(target)


def test_read_only_root_rejects_mkdir_and_touch():
    r = nsbox.run(["mkdir", "/nsbx-ro-dir"], capture_output=True, text=True)
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    r = nsbox.run(["touch", "/etc/nsbx-ro-new"], capture_output=True, text=True)
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    # An existing host file: EROFS, or EACCES first when the host file is not ours.
    r = nsbox.run(["sh", "-c", "echo >> /etc/passwd"], capture_output=True, text=True)
    assert r.returncode != 0
    if os.stat("/etc/passwd").st_uid == os.geteuid():
        assert "Read-only file system" in r.stderr
    else:
        assert "Read-only file system" in r.stderr or "Permission denied" in r.stderr


def test_read_only_root_cannot_be_remounted_read_write():
    # Only the remount is tried: nothing is written to the host even if it succeeds.
    r = nsbox.run(["sh", "-c", "mount -o remount,bind,rw / 2>/dev/null && echo REMOUNTED"],
                  capture_output=True, text=True)
    assert "REMOUNTED" not in r.stdout


def test_plain_remount_of_root_is_refused():
    r = nsbox.run(["sh", "-c", "mount -o remount,rw / 2>/dev/null && echo REMOUNTED"],
                  capture_output=True, text=True)
    assert "REMOUNTED" not in r.stdout


def test_tmp_is_private_empty_writable_tmpfs():
    name = f"nsbx-tmp-{uuid.uuid4().hex}"
    host_file = os.path.join("/tmp", name + "-host")
    try:
        with open(host_file, "w") as f:
            f.write("host")
    except OSError:
        host_file = None
    try:
        got = sh(f"ls -A /tmp; stat -f -c %T /tmp; stat -c %a /tmp; "
                 f"echo inside > /tmp/{name} && cat /tmp/{name}")
        assert got == "tmpfs\n1777\ninside\n"
        assert not os.path.exists(os.path.join("/tmp", name))
    finally:
        if host_file:
            os.unlink(host_file)


ESCAPE = r"""
import ctypes, os, sys
marker = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
def seen():
    return os.path.exists(marker) or os.path.exists("/dev/" + sys.argv[2])
out = [seen()]
for path in (b"/tmp", b"/dev", b"/proc"):  # what the sandbox's mounts cover
    rc = libc.umount2(path, 2)  # MNT_DETACH
    out.append(rc == 0 or ctypes.get_errno())
os.mkdir("/tmp/j")  # the classic chroot escape (the command has CAP_SYS_CHROOT)
os.chroot("/tmp/j")
for _ in range(64):
    os.chdir("..")
os.chroot(".")
out.append(seen())
try:
    open("/nsbx-escaped", "w")
    out.append("wrote /")
except OSError as exc:
    out.append(exc.errno)
print(out)
"""


MINIMAL_DEV = {"null", "zero", "full", "random", "urandom", "tty", "fd", "stdin", "stdout",
               "stderr", "ptmx", "pts", "shm"}


def test_what_the_mounts_cover_stays_out_of_reach():
    """The host's /tmp, /dev and /proc lie under the sandbox's own mounts (the
    root is the mount namespace's copy of the host's, made read-only in place):
    the command can neither unmount them nor climb out of a chroot to them."""
    name = f"nsbx-cover-{uuid.uuid4().hex}"
    marker = os.path.join("/tmp", name)
    with open(marker, "w") as f:
        f.write("host")
    try:
        host_dev = next(n for n in sorted(os.listdir("/dev")) if n not in MINIMAL_DEV)
        got = sh(f"{shlex.quote(SANDBOX_PYTHON)} -c {shlex.quote(ESCAPE)} {marker} {host_dev}")
    finally:
        os.unlink(marker)
    assert got.strip() == str([False, errno.EPERM, errno.EPERM, errno.EPERM, False,
                               errno.EROFS])
    assert not os.path.exists("/nsbx-escaped")


def test_a_caller_directory_under_what_the_mounts_cover_is_not_the_commands(monkeypatch):
    """The caller's cwd in the host's /tmp: the sandbox's /tmp is its own, so the
    command starts in / (not left on the host's directory under the mount)."""
    base = f"/tmp/nsbx-cwd-{uuid.uuid4().hex}"
    os.mkdir(base)
    try:
        with open(os.path.join(base, "host-secret"), "w") as f:
            f.write("x")
        monkeypatch.chdir(base)
        assert sh("pwd") == "/\n"
        assert "host-secret\n" not in sh("ls -A")
        assert sh("cat host-secret 2>/dev/null || echo none") == "none\n"
        # A cwd the caller cannot name any more (removed): / as well.
        os.mkdir(os.path.join(base, "gone"))
        monkeypatch.chdir(os.path.join(base, "gone"))
        os.rmdir(os.path.join(base, "gone"))
        assert sh("pwd") == "/\n"
    finally:
        monkeypatch.undo()
        shutil.rmtree(base)


def test_tmp_is_not_shared_between_sandboxes():
    sh("echo one > /tmp/nsbx-shared")
    assert sh("ls -A /tmp") == ""


DEV_NODES = ["null", "zero", "full", "random", "urandom", "tty"]


def test_dev_is_minimal():
    listing = set(sh("ls -A /dev").split())
    for name in [*DEV_NODES, "pts", "shm", "fd", "stdin", "stdout", "stderr"]:
        assert name in listing, name
    assert "sda" not in listing and "mem" not in listing and "kmsg" not in listing
    for node in DEV_NODES:
        assert nsbox.run(["test", "-c", f"/dev/{node}"]).returncode == 0, node
    assert nsbox.run(["test", "-d", "/dev/pts"]).returncode == 0
    assert nsbox.run(["test", "-d", "/dev/shm"]).returncode == 0
    for link, target in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")]:
        assert out(["readlink", f"/dev/{link}"]).strip() == target


def test_dev_nodes_work():
    assert sh("echo gone > /dev/null && echo ok") == "ok\n"
    assert sh("cat /dev/null | wc -c") == "0\n"
    assert sh("head -c 8 /dev/zero | od -An -tx1 | tr -d ' \\n'") == "00" * 8
    assert sh("head -c 16 /dev/urandom | wc -c") == "16\n"
    assert sh("head -c 16 /dev/random | wc -c") == "16\n"
    r = nsbox.run(["sh", "-c", "head -c 1 /dev/zero > /dev/full"], capture_output=True, text=True)
    assert r.returncode != 0 and "No space left on device" in r.stderr
    assert sh("echo via-stdout > /dev/stdout") == "via-stdout\n"
    assert sh("echo via-fd > /dev/fd/1") == "via-fd\n"


def test_dev_shm_and_pts_are_fresh():
    got = sh("stat -f -c %T /dev/shm; stat -f -c %T /dev/pts; ls -A /dev/shm")
    assert got.split() == ["tmpfs", "devpts"]


# -- cgroup -----------------------------------------------------------------------------


def test_cgroup_namespace_root():
    lines = out(["cat", "/proc/self/cgroup"]).splitlines()
    assert lines
    for line in lines:
        assert line.rsplit(":", 1)[1] == "/", line


def test_init_reaps_orphans():
    # Orphans are re-parented to our init, which must reap them: no zombies pile up.
    script = ("for i in 1 2 3 4 5 6 7 8; do (true &); done; sleep 0.3; "
              "for s in /proc/[0-9]*/stat; do read -r l < $s && echo \"$l\"; done")
    states = [line.rsplit(")", 1)[1].split()[0] for line in sh(script).splitlines()]
    assert "Z" not in states
