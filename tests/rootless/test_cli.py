"""python -m nsbox run: exit codes, options, status events, signal forwarding."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

CLI = [sys.executable, "-m", "nsbox", "run"]


def one_error_line(stderr: bytes) -> str:
    """stderr must be exactly one line `nsbox: ...`, without a traceback."""
    text = stderr.decode()
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("nsbox: "), text
    assert text.endswith("\n")
    return lines[0]


# -- exit codes -------------------------------------------------------------------------


def test_exit_zero(cli):
    r = cli("--", "true")
    assert r.returncode == 0
    assert r.stderr == b""


@pytest.mark.parametrize("code", [1, 3, 42, 255])
def test_exit_code_of_command(cli, code):
    assert cli("--", "sh", "-c", f"exit {code}").returncode == code


@pytest.mark.parametrize(("script", "sig"), [("kill -TERM $$", 15), ("kill -9 $$", 9),
                                             ("kill -INT $$", 2), ("kill -HUP $$", 1)])
def test_exit_128_plus_signal(cli, script, sig):
    assert cli("--", "sh", "-c", script).returncode == 128 + sig


def test_exit_124_on_timeout(cli, procs, marker, sleep_marker):
    t0 = time.monotonic()
    r = cli("--timeout", "0.5", "--", "sh", "-c",
            f"sleep {sleep_marker} & sleep {sleep_marker}; :", marker)
    assert r.returncode == 124
    assert time.monotonic() - t0 < 15
    assert procs.marked(marker, sleep_marker) == []


def test_timeout_not_reached(cli):
    assert cli("--timeout", "30", "--", "sh", "-c", "exit 5").returncode == 5


def test_exit_126_not_executable(cli):
    r = cli("--", "/etc/passwd")
    assert r.returncode == 126
    assert "/etc/passwd" in one_error_line(r.stderr)


def test_exit_127_not_found(cli):
    r = cli("--", "/nsbx-no-such-command")
    assert r.returncode == 127
    assert "/nsbx-no-such-command" in one_error_line(r.stderr)


def test_exit_127_not_found_on_path(cli):
    r = cli("--", "nsbx-no-such-command")
    assert r.returncode == 127
    one_error_line(r.stderr)


def test_command_may_exit_125_126_127_itself(cli):
    for code in (124, 125, 126, 127):
        r = cli("--", "sh", "-c", f"exit {code}")
        assert r.returncode == code
        assert r.stderr == b""


# -- bad options: 125, one line -------------------------------------------------------------

BAD = [
    ["--bogus", "--", "true"],
    ["--hostname", "bad_name!", "--", "true"],
    ["--hostname", "x" * 65, "--", "true"],
    ["--tmpfs", "/scratch:size=lots", "--", "true"],
    ["--tmpfs", "/scratch:nosuchopt=1", "--", "true"],
    ["--tmpfs", "relative", "--", "true"],
    ["--network", "Bridge", "--", "true"],
    ["--uid", "-1", "--", "true"],
    ["--uid", "abc", "--", "true"],
    ["--gid", "-3", "--", "true"],
    ["--chdir", "relative/dir", "--", "true"],
    ["--timeout", "-1", "--", "true"],
    ["--timeout", "abc", "--", "true"],
    ["--namespaces", "user,bogus", "--", "true"],
    ["--env", "=novalue", "--", "true"],
    ["--status-fd", "99", "--", "true"],
    ["--"],
    [],
]


@pytest.mark.parametrize("args", BAD, ids=lambda a: " ".join(a)[:40] or "no-args")
def test_bad_options_exit_125_with_one_line(cli, args):
    r = cli(*args)
    assert r.returncode == 125, r
    one_error_line(r.stderr)
    assert r.stdout == b""


def test_unknown_subcommand(cli):
    r = subprocess.run([sys.executable, "-m", "nsbox", "frobnicate"], capture_output=True,
                       timeout=30)
    assert r.returncode == 125
    one_error_line(r.stderr)


def test_setup_failure_exit_125_names_path(cli, tmp_path):
    missing = tmp_path / "nsbx-missing"
    r = cli("--bind", f"{missing}:/mnt/x", "--", "true")
    assert r.returncode == 125
    assert str(missing) in one_error_line(r.stderr)


def test_explicit_chdir_missing_exit_125(cli):
    r = cli("--chdir", "/nsbx-no-such-dir", "--", "true")
    assert r.returncode == 125
    assert "/nsbx-no-such-dir" in one_error_line(r.stderr)


def test_help(cli):
    r = cli("--help")
    assert r.returncode == 0
    text = r.stdout.decode()
    for option in ("--rootfs", "--bind", "--ro-bind", "--tmpfs", "--network", "--hostname",
                   "--env", "--clearenv", "--chdir", "--uid", "--gid", "--timeout",
                   "--status-fd"):
        assert option in text, option


# -- stdio ------------------------------------------------------------------------------------


def test_stdin_stdout_pass_through(cli):
    r = cli("--", "cat", input=b"hi\nthere\n")
    assert r.returncode == 0
    assert r.stdout == b"hi\nthere\n"


def test_pipeline_through_shell():
    r = subprocess.run(f"echo hi | {sys.executable} -m nsbox run -- cat", shell=True,
                       capture_output=True, timeout=30)
    assert r.returncode == 0
    assert r.stdout == b"hi\n"


def test_stderr_pass_through(cli):
    r = cli("--", "sh", "-c", "echo out; echo err >&2")
    assert r.stdout == b"out\n"
    assert r.stderr == b"err\n"


def test_large_binary_stdio(cli):
    data = os.urandom(1 << 20)
    r = cli("--", "cat", input=data)
    assert r.stdout == data


def test_awkward_arguments(cli):
    args = ["a b", "", "new\nline", "'q'", '"dq"', "--", "--timeout", "*", "\u00e9"]
    r = cli("--", "printf", "%s\\0", *args)
    assert r.stdout.split(b"\0")[:-1] == [a.encode() for a in args]


# -- options -----------------------------------------------------------------------------------


def test_env_and_clearenv(cli):
    r = cli("--clearenv", "--env", "A=1", "--env", "B=two words", "--env", "C=", "--", "env")
    assert sorted(r.stdout.decode().splitlines()) == ["A=1", "B=two words", "C="]


def test_env_adds_to_inherited(cli, marker):
    r = cli("--env", "NSBX_ADDED=yes", "--", "sh", "-c", 'echo "$NSBX_ADDED $NSBX_KEPT"',
            env=dict(os.environ, NSBX_KEPT=marker))
    assert r.stdout.decode() == f"yes {marker}\n"


def test_env_name_alone_copies_callers_value(cli, marker):
    r = cli("--clearenv", "--env", "NSBX_COPY", "--", "env",
            env=dict(os.environ, NSBX_COPY=marker))
    assert r.stdout.decode() == f"NSBX_COPY={marker}\n"


def test_clearenv_alone(cli):
    r = cli("--clearenv", "--", "/usr/bin/env")
    assert r.returncode == 0
    assert r.stdout == b""


def test_chdir(cli):
    assert cli("--chdir", "/usr", "--", "pwd").stdout == b"/usr\n"


def test_hostname(cli):
    before = socket.gethostname()
    assert cli("--hostname", "nsbx-cli", "--", "hostname").stdout == b"nsbx-cli\n"
    assert socket.gethostname() == before


def test_bind_and_ro_bind(cli, tmp_path):
    rw = tmp_path / "rw"
    ro = tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "f").write_text("ro\n")
    tmp_path.chmod(0o755)
    r = cli("--bind", f"{rw}:/mnt/nsbx-rw", "--ro-bind", f"{ro}:/mnt/nsbx-ro", "--",
            "sh", "-c", "echo w > /mnt/nsbx-rw/new; cat /mnt/nsbx-ro/f; echo x > /mnt/nsbx-ro/g")
    assert r.returncode != 0
    assert b"Read-only file system" in r.stderr
    assert r.stdout == b"ro\n"
    assert (rw / "new").read_text() == "w\n"
    assert not (ro / "g").exists()


def test_bind_same_path(cli, tmp_path):
    (tmp_path / "f").write_text("same\n")
    tmp_path.chmod(0o755)
    assert cli("--ro-bind", str(tmp_path), "--", "cat", str(tmp_path / "f")).stdout == b"same\n"


def test_tmpfs_with_size(cli):
    r = cli("--tmpfs", "/scratch:size=1M", "--", "sh", "-c",
            "stat -f -c %T /scratch; head -c 2097152 /dev/zero > /scratch/big")
    assert r.stdout == b"tmpfs\n"
    assert r.returncode != 0
    assert b"No space left on device" in r.stderr


def test_network_none_and_host(cli):
    with open("/proc/self/net/dev") as f:
        host = {line.split(":")[0].strip() for line in f.read().splitlines()[2:]}
    inside = cli("--", "cat", "/proc/net/dev").stdout.decode().splitlines()[2:]
    assert {line.split(":")[0].strip() for line in inside} == {"lo"}
    shared = cli("--network", "host", "--", "cat", "/proc/net/dev").stdout.decode()
    assert {line.split(":")[0].strip() for line in shared.splitlines()[2:]} == host


def test_uid_gid(cli):
    assert cli("--uid", "1000", "--gid", "1000", "--", "sh", "-c", "id -u; id -g").stdout == \
        b"1000\n1000\n"
    assert cli("--", "id", "-u").stdout == b"0\n"


def test_rootfs(cli, tmp_path, static_probe):
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    exe = root / "bin" / "probe"
    exe.write_bytes(open(static_probe.path, "rb").read())
    exe.chmod(0o755)
    for p in (tmp_path, root, root / "bin"):
        p.chmod(0o755)
    r = cli("--rootfs", str(root), "--", *static_probe.argv("/bin/probe", "ls", "/"))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.decode().split()) == ["bin", "dev", "proc", "tmp"]


# -- status fd ---------------------------------------------------------------------------------


def _status_run(*args: str, **kw) -> tuple[subprocess.CompletedProcess, list[dict]]:
    r, w = os.pipe()
    try:
        proc = subprocess.run([*CLI, "--status-fd", str(w), *args], pass_fds=(w,),
                              capture_output=True, timeout=30, **kw)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        events = [json.loads(line) for line in f.read().splitlines()]
    return proc, events


def test_status_fd_events():
    proc, events = _status_run("--", "sh", "-c", "exit 3")
    assert proc.returncode == 3
    assert [e["event"] for e in events] == ["started", "exited"]
    started, exited = events
    assert isinstance(started["pid"], int) and started["pid"] > 0
    assert exited["returncode"] == 3
    assert exited["signal"] is None
    assert isinstance(exited["wall_time"], float) and 0 <= exited["wall_time"] < 30
    assert exited["reason"] == "exited" and exited["timed_out"] is False
    stats = exited["stats"]
    assert set(stats) == {"wall_time", "user_time", "system_time", "peak_memory", "memory",
                          "pids", "pids_peak", "oom_kills"}
    assert 0 < stats["wall_time"] < 30 and stats["peak_memory"] > 0


def test_status_fd_signal_death():
    proc, events = _status_run("--", "sh", "-c", "kill -TERM $$")
    assert proc.returncode == 143
    assert events[-1]["event"] == "exited"
    assert events[-1]["returncode"] == -15
    assert events[-1]["signal"] == 15
    assert events[-1]["reason"] == "signaled"


def test_status_fd_timeout():
    proc, events = _status_run("--timeout", "0.3", "--", "sleep", "100")
    assert proc.returncode == 124
    assert [e["event"] for e in events] == ["started", "exited"]
    assert events[-1]["reason"] == "timeout" and events[-1]["timed_out"] is True


def test_status_fd_not_given_to_command():
    proc, _ = _status_run("--", "ls", "/proc/self/fd")
    fds = {int(x) for x in proc.stdout.split()}
    assert len(fds - {0, 1, 2}) <= 1  # ls's directory fd only


def test_status_fd_setup_failure_has_no_started_event():
    proc, events = _status_run("--", "/nsbx-no-such-command")
    assert proc.returncode == 127
    assert all(e["event"] != "started" for e in events)


# -- signal forwarding ---------------------------------------------------------------------------


def _start_trapping_cli(sig: str, code: int, sleep_marker: str, *extra: str,
                        settle: float = 0.3):
    """The CLI running a shell that prints `ready` once its trap is set."""
    r, w = os.pipe()
    script = f"trap 'exit {code}' {sig}; echo ready; sleep {sleep_marker} & wait"
    proc = subprocess.Popen([*CLI, "--status-fd", str(w), *extra, "--", "sh", "-c", script],
                            pass_fds=(w,), stdout=subprocess.PIPE)
    os.close(w)
    with os.fdopen(r, "rb") as status:
        started = json.loads(status.readline())
    assert started["event"] == "started"
    assert proc.stdout.readline() == b"ready\n"
    time.sleep(settle)  # let the CLI settle into waiting, as for a human's Ctrl-C
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 10) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        # A hang: what the CLI's process tree was doing (pytest shows it with the failure).
        tree = subprocess.run(["ps", "-e", "-o", "pid,ppid,stat,wchan:24,args", "--forest"],
                              capture_output=True, text=True).stdout
        print(f"the CLI (pid {proc.pid}) hung; processes:\n{tree}", file=sys.stderr)
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.mark.parametrize(("signame", "code"), [("TERM", 7), ("INT", 8), ("HUP", 9),
                                               ("USR1", 10)])
@pytest.mark.parametrize("extra", [(), ("--timeout", "60")], ids=["plain", "with-timeout"])
def test_cli_forwards_signals(signame, code, extra, procs, sleep_marker):
    proc = _start_trapping_cli(signame, code, sleep_marker, *extra)
    proc.send_signal(getattr(signal, f"SIG{signame}"))
    rc = _finish(proc, timeout=10)
    assert rc == code  # None: the CLI hung
    assert procs.wait_gone(sleep_marker, timeout=5) == []


COUNT_INTS = """
import signal, sys, time
n = 0
def h(*_):
    global n
    n += 1
signal.signal(signal.SIGINT, h)
print("ready", flush=True)
time.sleep(1.5)
print("count", n, flush=True)
"""


def test_a_terminals_ctrl_c_reaches_the_command_once():
    # ^C goes to the terminal's whole foreground process group: the command
    # (in it, as under unshare or a plain shell) gets its own copy; neither the
    # CLI nor nsbox-init may send it a second.
    import pty
    import select

    from nsbx_test_helpers import SANDBOX_PYTHON

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(sys.executable, [*CLI, "--", SANDBOX_PYTHON, "-c", COUNT_INTS])
    out = b""
    try:
        deadline = time.monotonic() + 60
        sent = False
        while b"count" not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break
            if b"ready" in out and not sent:
                os.write(fd, b"\x03")
                sent = True
        while select.select([fd], [], [], 1)[0]:  # the rest, to the end
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert b"count 1" in out, out
    assert os.waitstatus_to_exitcode(status) == 0


def test_cli_forwards_signals_after_being_stopped_and_continued(procs, sleep_marker):
    # ^Z then fg: the wait for signals is cut short with a siginfo that is not
    # one; forwarding must go on.
    proc = _start_trapping_cli("TERM", 7, sleep_marker)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(0.2)
    proc.send_signal(signal.SIGCONT)
    time.sleep(0.2)
    proc.terminate()
    assert _finish(proc, timeout=10) == 7
    assert procs.wait_gone(sleep_marker, timeout=5) == []


def test_cli_forwards_signal_sent_right_after_start(procs, sleep_marker):
    proc = _start_trapping_cli("TERM", 7, sleep_marker, settle=0)
    proc.terminate()
    assert _finish(proc, timeout=10) == 7
    assert procs.wait_gone(sleep_marker, timeout=5) == []


def test_cli_sigterm_default_action(procs, sleep_marker):
    r, w = os.pipe()
    proc = subprocess.Popen([*CLI, "--status-fd", str(w), "--timeout", "60", "--",
                             "sleep", sleep_marker], pass_fds=(w,), stdout=subprocess.PIPE)
    os.close(w)
    with os.fdopen(r, "rb") as status:
        assert json.loads(status.readline())["event"] == "started"
    time.sleep(0.1)
    proc.terminate()
    assert _finish(proc) == 128 + signal.SIGTERM
    assert procs.marked(sleep_marker) == []
