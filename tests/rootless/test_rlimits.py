"""rlimits (no privilege needed) and the cgroup limits' behaviour for callers
who cannot have cgroups. Runs as root, under `unshare -r` and as uid 65534."""

from __future__ import annotations

import signal

import pytest
from nsbx_test_helpers import SANDBOX_PYTHON

import nsbox
from nsbox import _cgroup

pytestmark = pytest.mark.usefixtures("userns")

PY = SANDBOX_PYTHON

FD_HOG = ("import os\nfds = []\ntry:\n    while True:\n"
          "        fds.append(os.open('/dev/null', 0))\n"
          "except OSError as e:\n    print(len(fds), max(fds), e.errno)\n")


def sh(script: str, **kw) -> nsbox.Result:
    return nsbox.run(["sh", "-c", script], capture_output=True, text=True, **kw)


def test_rlimits_are_the_commands():
    r = sh("ulimit -n; ulimit -t; ulimit -f; ulimit -c",
           limits=nsbox.Limits(nofile=16, cpu_time=5, fsize="1M", core=0))
    # (dash's ulimit -f counts 512-byte blocks.)
    assert r.stdout.split() == ["16", "5", "2048", "0"]
    assert (r.returncode, r.reason) == (0, "exited")


def test_nofile_caps_open_files():
    r = nsbox.run([PY, "-c", FD_HOG], capture_output=True, text=True,
                  limits=nsbox.Limits(nofile=16))
    count, highest, err = map(int, r.stdout.split())
    assert highest == 15 and err == 24  # EMFILE at fd 16
    assert count >= 8


def test_cpu_time_ends_with_reason_cpu_time():
    r = nsbox.run(["sh", "-c", "while :; do :; done"], limits=nsbox.Limits(cpu_time=1),
                  timeout=60)
    assert r.returncode == -signal.SIGXCPU
    assert r.reason == "cpu_time"
    assert r.stats.cpu_time >= 0.9


def test_cpu_time_on_the_cli(cli):
    r = cli("--cpu-time", "1", "--", "sh", "-c", "while :; do :; done", timeout=60)
    assert r.returncode == 128 + signal.SIGXCPU
    assert r.stderr.decode().splitlines()[-1] == "nsbox: killed: CPU time limit (1 s)"


def test_fsize_stops_a_big_write():
    r = sh("head -c 100000 /dev/zero > /tmp/f; echo $?; wc -c < /tmp/f",
           limits=nsbox.Limits(fsize="16K"))
    status, size = r.stdout.split()
    assert status != "0" and int(size) == 16384


def test_nofile_above_the_hard_limit_is_a_limit_error():
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with pytest.raises(nsbox.LimitError) as info:
        nsbox.run(["true"], limits=nsbox.Limits(nofile=max(hard, 1 << 20) * 2))
    exc = info.value
    assert exc.stage == "rlimit" and "nofile=" in str(exc) and "\n" not in str(exc)


def test_stats_without_a_cgroup():
    r = nsbox.run([PY, "-c", "x = b'x' * (30 << 20)"])
    assert r.returncode == 0 and r.reason == "exited"
    s = r.stats
    assert s.wall_time > 0 and s.user_time + s.system_time > 0
    assert s.peak_memory >= 30 << 20  # the largest process's RSS, from rusage
    assert s.oom_kills is None and s.pids_peak is None


def test_peak_memory_is_the_sandboxes_not_the_callers():
    # The setup child shares the caller's memory until init's exec: its rusage
    # counts the caller; init reports what it reaped instead.
    ballast = bytearray(200 << 20)
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # resident
    s = nsbox.run(["true"]).stats
    assert 0 < s.peak_memory < 100 << 20
    del ballast


def test_live_stats_of_the_tree():
    with nsbox.Sandbox(["sh", "-c", "sleep 30 & sleep 30 & wait"]) as box:
        for _ in range(200):
            live = box.stats()
            if live.pids == 4:
                break
            import time

            time.sleep(0.01)
        assert live.pids == 4 and live.memory > 0  # init, sh, two sleeps
        box.terminate()
        box.wait()
    assert box.reason == "killed"
    assert box.stats().memory is None and box.stats().wall_time > 0


def _host_uid() -> int:
    import os

    with open("/proc/self/uid_map") as f:
        for line in f:
            inside, outside, count = map(int, line.split())
            if inside <= os.geteuid() < inside + count:
                return outside + os.geteuid() - inside
    return -1


def test_cgroup_limits_work_or_say_clearly_why_not():
    host = _cgroup.host()
    v2_memory = host.v2 is not None and "memory" in host.v2_controllers(host.v2.mountpoint)
    lim = nsbox.Limits(memory="64M")
    if _host_uid() == 0:
        assert nsbox.run(["true"], limits=lim).returncode == 0
    elif "memory" in host.v1 and not v2_memory:
        # cgroup v1 has no delegation: an unprivileged caller gets a clear error.
        with pytest.raises(nsbox.UnsupportedError) as info:
            nsbox.run(["true"], limits=lim)
        msg = str(info.value)
        assert msg.startswith("nsbox: cannot create cgroups under") and "\n" not in msg
        assert "root" in msg and "rlimits" in msg
    else:
        pytest.skip("a cgroup v2 host: the delegated case is tested on the fake tree")
