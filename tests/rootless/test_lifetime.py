"""Lifetime: the sandbox dies with its parent; many runs leak nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import nsbox

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(nsbox.__file__)))

HELPER = r"""
import os, time
import nsbox
# Markers come by environment, so that only the sandbox's argv carries them.
marker, sleep_arg, kind = os.environ["NSBX_HELPER"].split()
if kind == "sandbox":
    box = nsbox.Sandbox(["sh", "-c", f"sleep {sleep_arg} & sleep {sleep_arg}; :", marker])
    print(box.pid, flush=True)
else:  # run() blocked in a thread, the main thread prints the pid of the sandbox
    import threading
    t = threading.Thread(target=nsbox.run, args=(["sleep", sleep_arg, "0"],), daemon=True)
    t.start()
    print(0, flush=True)
time.sleep(1000)
"""


def _helper_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PKG_ROOT, env.get("PYTHONPATH")]))
    return env


@pytest.mark.parametrize("kind", ["sandbox", "run-in-thread"])
def test_sandbox_dies_with_its_parent(procs, marker, sleep_marker, kind):
    helper = subprocess.Popen(
        [sys.executable, "-c", HELPER], stdout=subprocess.PIPE,
        env=_helper_env(NSBX_HELPER=f"{marker} {sleep_marker} {kind}"),
    )
    try:
        line = helper.stdout.readline()
        assert line.strip().isdigit(), line
        # (nsbox-init's argv holds the command's too: count at least the sleeps)
        want = 2 if kind == "sandbox" else 1
        found = procs.wait_present(sleep_marker, count=want)
        assert len(found) >= want, found
        tree = set()
        for child in procs.children():
            if child == helper.pid:
                tree = procs.tree(child)
        assert len(tree) >= 3  # the helper, init, the command...
    finally:
        helper.kill()  # SIGKILL: no chance to clean up
        helper.wait()
        helper.stdout.close()
    assert procs.wait_gone(marker, sleep_marker, timeout=5) == []
    # Every process of the sandbox is gone (init is reaped by the reaper of orphans, or
    # at worst a zombie there, never still running).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = [p for p, _ in procs.alive(tree) if procs.state(p) not in (None, "Z")]
        if not alive:
            break
        time.sleep(0.02)
    assert alive == []


def test_sandbox_outlives_the_thread_that_started_it(sleep_marker):
    # The death signal follows the starting thread; the sandbox must follow the process.
    boxes: list[nsbox.Sandbox] = []
    t = threading.Thread(target=lambda: boxes.append(nsbox.Sandbox(["sleep", sleep_marker])))
    t.start()
    t.join()
    with boxes[0] as box:
        time.sleep(0.3)
        assert box.poll() is None
        box.terminate()
        assert box.wait(timeout=20) == -signal.SIGTERM


def test_cli_killed_takes_the_sandbox_with_it(procs, marker, sleep_marker):
    r, w = os.pipe()
    cli = subprocess.Popen(
        [sys.executable, "-m", "nsbox", "run", "--status-fd", str(w), "--",
         "sh", "-c", f"sleep {sleep_marker} & sleep {sleep_marker}; :", marker],
        pass_fds=(w,), env=_helper_env(),
    )
    os.close(w)
    try:
        with os.fdopen(r, "rb") as status:
            assert b'"started"' in status.readline()
            assert len(procs.wait_present(sleep_marker, count=2)) == 2
            cli.kill()
            cli.wait()
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert procs.wait_gone(marker, sleep_marker, timeout=5) == []


def _zombies(procs) -> list[int]:
    return [p for p in procs.children() if procs.state(p) == "Z"]


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _mount_count() -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for _ in f)


def test_many_runs_leak_nothing(tmp_path, procs, marker):
    data = tmp_path / "data"
    data.mkdir()
    tmp_path.chmod(0o755)
    top_before = sorted(os.listdir("/"))
    mnt_before = sorted(os.listdir("/mnt"))
    nsbox.run(["true"])  # warm up
    fds, mounts, kids = _fd_count(), _mount_count(), procs.children()
    variants = [
        dict(),
        dict(capture_output=True),
        dict(mounts=[nsbox.Bind(str(data), "/mnt/nsbx-leak")], hostname="leak"),
        dict(mounts=[nsbox.Tmpfs("/nsbx-leak/t", size="1M")], stdout=nsbox.DEVNULL),
        dict(input=b"x", capture_output=True, network="host"),
    ]
    for i in range(300):
        kw = variants[i % len(variants)]
        r = nsbox.run(["sh", "-c", "exit $(( $1 % 7 ))", marker, str(i)], **kw)
        assert r.returncode == i % 7
    assert _zombies(procs) == []
    assert procs.children() == kids
    assert _fd_count() == fds
    assert _mount_count() == mounts
    assert sorted(os.listdir("/")) == top_before
    assert sorted(os.listdir("/mnt")) == mnt_before
    assert os.listdir(data) == []
    assert procs.marked(marker) == []


def test_many_failed_starts_leak_nothing(procs):
    fds, mounts, kids = _fd_count(), _mount_count(), procs.children()
    for i in range(100):
        if i % 2:
            with pytest.raises(nsbox.CommandNotFoundError):
                nsbox.run(["/nsbx-no-such-command"], capture_output=True)
        else:
            with pytest.raises(nsbox.MountError):
                nsbox.run(["true"], mounts=[nsbox.Bind("/nsbx-no-such-source", "/mnt/x")],
                          input=b"x")
    assert _zombies(procs) == []
    assert procs.children() == kids
    assert _fd_count() == fds
    assert _mount_count() == mounts


def test_many_killed_sandboxes_leak_nothing(procs, sleep_marker):
    fds, kids = _fd_count(), procs.children()
    for i in range(50):
        with nsbox.Sandbox(["sh", "-c", f"sleep {sleep_marker} & wait"],
                           stdout=nsbox.PIPE, stdin=nsbox.PIPE) as box:
            if i % 2:
                box.kill()
    assert _zombies(procs) == []
    assert procs.children() == kids
    assert _fd_count() == fds
    assert procs.marked(sleep_marker) == []


def test_many_timeouts_leave_no_process(procs, marker, sleep_marker):
    for _ in range(10):
        with pytest.raises(subprocess.TimeoutExpired):
            nsbox.run(["sh", "-c", f"sleep {sleep_marker} & sleep {sleep_marker}; :", marker],
                      timeout=0.05, capture_output=True)
        assert procs.marked(marker, sleep_marker) == []
    assert _zombies(procs) == []
