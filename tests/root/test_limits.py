"""Real cgroup limits (real root): v1 here for memory, pids and cpu, v2 for real
on whatever cgroup2 is mounted (placement, cgroup.kill, removal), the reasons,
the CLI's lines, and that no cgroup outlives its sandbox, also when the
caller is killed. The autouse leak check (tests/conftest.py) also fails any
test that leaves an nsbx- cgroup behind.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from nsbx_test_helpers import SANDBOX_PYTHON, need, uniq

import nsbox
from nsbox import _cgroup

HOG = "x = []\nwhile True:\n    x.append(b'x' * (1 << 20))\n"


@pytest.fixture(autouse=True)
def _root(real_root):
    host = _cgroup.host()
    need(bool(host.v1) or host.v2 is not None, "no cgroup hierarchy is mounted")


def controllers_here(*names: str) -> None:
    host = _cgroup.host()
    ok = all(n in host.v1 for n in names) or (
        host.v2 is not None and set(names) <= host.v2_controllers(host.v2.mountpoint))
    need(ok, f"cgroup controllers {names} are not available here")


def sandbox_cgroups() -> set[str]:
    import glob

    return {*glob.glob("/sys/fs/cgroup/*/nsbox/nsbx-*"), *glob.glob("/sys/fs/cgroup/nsbox/nsbx-*")}


# -- memory ------------------------------------------------------------------------------


def test_memory_hog_ends_with_reason_oom():
    controllers_here("memory")
    r = nsbox.run([SANDBOX_PYTHON, "-c", HOG], limits=nsbox.Limits(memory="50M"),
                  capture_output=True)
    assert r.returncode == -signal.SIGKILL
    assert r.reason == "oom"
    assert r.stats.oom_kills >= 1
    # The cgroup's peak, not one process's RSS: at the limit, never far above.
    assert 40 << 20 <= r.stats.peak_memory <= 51 << 20


def test_oom_on_the_cli(cli):
    controllers_here("memory")
    rfd, wfd = os.pipe()
    try:
        r = cli("--memory", "50M", "--status-fd", str(wfd), "--", SANDBOX_PYTHON, "-c", HOG,
                pass_fds=(wfd,))
    finally:
        os.close(wfd)
        with os.fdopen(rfd) as f:
            events = [json.loads(line) for line in f]
    assert r.returncode == 128 + signal.SIGKILL
    assert r.stderr.decode().splitlines()[-1] == "nsbox: killed: out of memory (limit 50M)"
    exited = events[-1]
    assert exited["event"] == "exited" and exited["reason"] == "oom"
    assert exited["stats"]["oom_kills"] >= 1 and exited["stats"]["peak_memory"] > 0


def test_a_program_under_its_memory_limit_is_untouched():
    controllers_here("memory")
    r = nsbox.run([SANDBOX_PYTHON, "-c", "x = b'x' * (20 << 20)"],
                  limits=nsbox.Limits(memory="128M"))
    assert (r.returncode, r.reason, r.stats.oom_kills) == (0, "exited", 0)


# -- pids --------------------------------------------------------------------------------

FORK_LOOP = textwrap.dedent("""
    import os, time
    kids = []
    for _ in range(60):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        kids.append(pid)
    print(len(kids), len([p for p in os.listdir("/proc") if p.isdigit()]))
""")


def test_fork_loop_cannot_exceed_pids():
    controllers_here("pids")
    start = time.monotonic()
    r = nsbox.run([SANDBOX_PYTHON, "-c", FORK_LOOP], limits=nsbox.Limits(pids=20),
                  capture_output=True, text=True, timeout=60)
    forked, visible = map(int, r.stdout.split())
    # init and python are two of the 20 tasks.
    assert forked == 18 and visible == 20
    assert r.returncode == 0 and r.reason == "exited"
    if r.stats.pids_peak is not None:
        assert r.stats.pids_peak == 20
    # The sleepers die with the sandbox: it ended when python did, not 60 s later.
    assert time.monotonic() - start < 30


# -- cpu ---------------------------------------------------------------------------------


def test_cpus_quarter_uses_about_a_quarter():
    controllers_here("cpu")
    with nsbox.Sandbox(["sh", "-c", "while :; do :; done"], limits=nsbox.Limits(cpus=0.25)) as box:
        time.sleep(2.0)
        live = box.stats()
        box.kill()
        box.wait()
    used = live.cpu_time / live.wall_time
    assert 0.1 < used < 0.45, used
    assert box.reason == "killed"


# -- the cgroup itself ---------------------------------------------------------------------


def test_sandbox_sees_its_cgroup_as_root_and_the_host_sees_it_in_ours():
    controllers_here("pids")
    with nsbox.Sandbox(["sh", "-c", "cat /proc/self/cgroup; exec sleep 60"],
                       limits=nsbox.Limits(pids=50), stdout=nsbox.PIPE, text=True) as box:
        inside = box.stdout.readline()
        while not inside.startswith(("0::", "1:")) and inside:
            inside = box.stdout.readline()
        with open(f"/proc/{box.pid}/cgroup") as f:
            host_view = f.read()
        group = box._group
        assert group is not None
        assert all(os.path.basename(d) in host_view for d in group.dirs)
        assert box.pid in group.pids()
        deadline = time.monotonic() + 5
        while (live := box.stats()).pids != 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # cat may not have exited yet
        assert live.pids == 2 and live.memory > 0  # init and sleep
        box.kill()
        box.wait()
    assert inside.rstrip().endswith(":/"), inside
    assert not any(os.path.exists(d) for d in group.dirs)


def test_cgroup_is_removed_on_every_path():
    controllers_here("pids")
    before = sandbox_cgroups()
    lim = nsbox.Limits(pids=10)
    nsbox.run(["true"], limits=lim)
    with pytest.raises(subprocess.TimeoutExpired):
        nsbox.run(["sleep", "30"], limits=lim, timeout=0.2)
    with pytest.raises(nsbox.CommandNotFoundError):
        nsbox.run(["/nonexistent/cmd"], limits=lim)
    with pytest.raises(nsbox.MountError):
        nsbox.run(["true"], limits=lim, _debug_fail=("mount", errno.EIO))
    with pytest.raises(nsbox.SpawnError):
        nsbox.run(["true"], limits=lim, _debug_fail=("clone", errno.EAGAIN))
    box = nsbox.Sandbox(["sleep", "30"], limits=lim)
    box.close()
    assert sandbox_cgroups() == before


def test_forced_cgroup_stage_failure_is_a_limit_error():
    controllers_here("pids")
    with pytest.raises(nsbox.LimitError) as info:
        nsbox.run(["true"], limits=nsbox.Limits(pids=10), _debug_fail=("cgroup", errno.EPERM))
    assert (info.value.stage, info.value.errno) == ("cgroup", errno.EPERM)
    assert str(info.value).startswith("nsbox: setup failed at cgroup")


def test_without_pid_namespace_kill_takes_the_whole_cgroup(procs, sleep_marker):
    controllers_here("pids")
    script = f"sleep {sleep_marker} & sleep {sleep_marker} & wait"
    box = nsbox.Sandbox(["sh", "-c", script], namespaces=["user", "mount"],
                        limits=nsbox.Limits(pids=10))
    procs.wait_present(sleep_marker, count=2)
    box.kill()
    box.wait()
    assert procs.wait_gone(sleep_marker) == []


KILLED_PARENT = textwrap.dedent("""
    import sys, nsbox
    lim = nsbox.Limits(**eval(sys.argv[1]))
    box = nsbox.Sandbox(["sh", "-c", "sleep 60 & sleep 60 & wait"], limits=lim)
    print(" ".join(box._group.dirs), flush=True)
    sys.stdin.read()
""")


def kill_caller_and_check_cgroup_goes(limits: dict) -> None:
    """A caller with a limited sandbox is SIGKILLed: the sandbox dies with it
    and its init removes the cgroup, with no other nsbox process involved."""
    p = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, repr(limits)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        dirs = p.stdout.readline().split()
        assert dirs and all(os.path.isdir(d) for d in dirs)
    finally:
        p.kill()
        p.wait()
        p.stdin.close()
        p.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(d) for d in dirs):
        time.sleep(0.02)
    assert not any(os.path.exists(d) for d in dirs)
    return dirs


def test_cgroup_of_a_killed_caller_is_removed_by_init():
    controllers_here("memory", "pids")
    parents = {os.path.dirname(d) for d in
               kill_caller_and_check_cgroup_goes({"memory": "64M", "pids": 10})}
    # nsbox's own parent stays (init stepped into it to remove the sandbox's
    # cgroup, on cgroup v1): the next nsbox process that uses it removes it
    # when it exits. (First let init, which stepped into it, finish exiting.)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            open(os.path.join(d, "cgroup.procs")).read() for d in parents):
        time.sleep(0.02)
    subprocess.run([sys.executable, "-m", "nsbox", "run", "--memory", "64M", "--pids", "10",
                    "--", "true"], check=True)
    assert not [d for d in parents if os.path.exists(d)]


def test_default_parent_is_released_when_empty():
    controllers_here("pids")
    with nsbox.Sandbox(["sleep", "30"], limits=nsbox.Limits(pids=10)) as a:
        parent = os.path.dirname(a._group.dirs[0])
        assert parent not in _cgroup.release_parents()  # in use
    assert os.path.isdir(parent)  # kept between spawns...
    assert parent in _cgroup.release_parents()  # ...and removed at exit (or on request)
    assert not os.path.exists(parent)


def test_stale_cgroup_is_collected_by_the_next_nsbox_process():
    # What init could not remove (it was killed too): an empty nsbx- cgroup of
    # a process that is gone. The next nsbox process using the parent removes it.
    controllers_here("pids")
    group = _cgroup.create(nsbox.Limits(pids=10))  # (makes sure the parent exists)
    parent = os.path.dirname(group.dirs[0])
    stale = os.path.join(parent, f"{_cgroup.PREFIX}999999999-1-1")
    os.mkdir(stale)
    group.remove()
    assert os.path.isdir(parent)  # the stale one keeps it
    subprocess.run([sys.executable, "-m", "nsbox", "run", "--pids", "10", "--", "true"],
                   check=True)
    assert not os.path.exists(stale) and not os.path.exists(parent)


# -- cgroup v2 for real -------------------------------------------------------------------


@pytest.fixture
def v2_parent():
    host = _cgroup.host()
    need(host.v2 is not None, "no cgroup2 hierarchy is mounted")
    name = "/" + uniq("nsbx-test")
    path = host.v2.path(name)
    yield name, path
    if os.path.isdir(path):
        os.rmdir(path)


def test_v2_for_real_clone_into_cgroup_and_kill(v2_parent, procs, sleep_marker):
    name, path = v2_parent
    lim = nsbox.Limits(cgroup_parent=name)
    r = nsbox.run(["cat", "/proc/self/cgroup"], limits=lim, capture_output=True, text=True)
    assert r.returncode == 0 and "0::/\n" in r.stdout
    # Without a pid namespace only the cgroup holds the processes together.
    box = nsbox.Sandbox(["sh", "-c", f"sleep {sleep_marker} & sleep {sleep_marker} & wait"],
                        namespaces=["user", "mount"], limits=lim)
    try:
        group = box._group
        assert group.version == 2 and group.dirs[0].startswith(path + "/nsbx-")
        procs.wait_present(sleep_marker, count=2)
        assert box.pid in group.pids() and group.populated()
    finally:
        box.kill()
        box.wait()
    assert procs.wait_gone(sleep_marker) == []
    assert [d for d in os.listdir(path) if d.startswith("nsbx-")] == []


def test_v2_for_real_killed_caller(v2_parent):
    name, path = v2_parent
    kill_caller_and_check_cgroup_goes({"cgroup_parent": name})
