"""nsbox.run behaves like subprocess.run, in a real sandbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import nsbox

SH = "/bin/sh"


def sh(script: str, *args: str) -> list[str]:
    return [SH, "-c", script, "sh", *args]


# -- status ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 3, 42, 255])
def test_returncode(code):
    assert nsbox.run(sh(f"exit {code}")).returncode == code


@pytest.mark.parametrize(
    ("script", "sig"),
    [("kill -TERM $$", signal.SIGTERM), ("kill -9 $$", signal.SIGKILL),
     ("kill -INT $$", signal.SIGINT), ("kill -SEGV $$", signal.SIGSEGV)],
)
def test_signal_death_is_negative_signal_number(script, sig):
    assert nsbox.run(sh(script)).returncode == -sig


def test_true_and_false():
    assert nsbox.run(["/bin/true"]).returncode == 0
    assert nsbox.run(["false"]).returncode == 1


# -- stdio ----------------------------------------------------------------------------


def test_capture_output_bytes():
    r = nsbox.run(sh("echo out; echo err >&2"), capture_output=True)
    assert r.stdout == b"out\n"
    assert r.stderr == b"err\n"


def test_stdout_pipe_only():
    r = nsbox.run(sh("echo out"), stdout=nsbox.PIPE)
    assert r.stdout == b"out\n"
    assert r.stderr is None


def test_text_mode():
    r = nsbox.run(sh("printf 'caf\\303\\251\\n'; echo e >&2"), capture_output=True, text=True)
    assert r.stdout == "caf\u00e9\n"
    assert r.stderr == "e\n"


def test_input_bytes():
    data = bytes(range(256)) * 1000  # larger than a pipe buffer
    r = nsbox.run(["cat"], input=data, capture_output=True)
    assert r.returncode == 0
    assert r.stdout == data


def test_input_text():
    r = nsbox.run(["cat"], input="h\u00e9llo\n", capture_output=True, text=True)
    assert r.stdout == "h\u00e9llo\n"


def test_input_empty_closes_stdin():
    r = nsbox.run(["cat"], input=b"", capture_output=True, timeout=20)
    assert r.returncode == 0
    assert r.stdout == b""


def test_large_output_both_streams():
    r = nsbox.run(sh("head -c 300000 /dev/zero; head -c 200000 /dev/zero >&2"),
                  capture_output=True)
    assert len(r.stdout) == 300000
    assert len(r.stderr) == 200000


def test_stdout_devnull(capfd):
    token = "nsbx-devnull-token"
    r = nsbox.run(["echo", token], stdout=nsbox.DEVNULL)
    assert r.returncode == 0
    assert r.stdout is None
    assert token not in capfd.readouterr().out


def test_stdout_inherited(capfd):
    token = "nsbx-inherit-token"
    nsbox.run(["echo", token])
    assert token in capfd.readouterr().out


def test_stdin_devnull():
    r = nsbox.run(["cat"], stdin=nsbox.DEVNULL, stdout=nsbox.PIPE, timeout=20)
    assert r.stdout == b""


def test_stdin_from_file(tmp_path):
    f = tmp_path / "in.txt"
    f.write_bytes(b"from a file\n")
    with open(f, "rb") as fh:
        r = nsbox.run(["cat"], stdin=fh, stdout=nsbox.PIPE)
    assert r.stdout == b"from a file\n"


def test_stdout_to_file(tmp_path):
    f = tmp_path / "out.txt"
    with open(f, "wb") as fh:
        r = nsbox.run(["echo", "to a file"], stdout=fh)
    assert r.returncode == 0
    assert f.read_bytes() == b"to a file\n"


def test_stderr_to_stdout():
    r = nsbox.run(sh("echo out; echo err >&2; echo out2"), stdout=nsbox.PIPE,
                  stderr=nsbox.STDOUT)
    assert r.stdout == b"out\nerr\nout2\n"
    assert r.stderr is None


# -- check, timeout -----------------------------------------------------------------


def test_check_raises_called_process_error():
    with pytest.raises(subprocess.CalledProcessError) as info:
        nsbox.run(sh("echo o; echo e >&2; exit 3"), check=True, capture_output=True)
    assert info.value.returncode == 3
    assert info.value.stdout == b"o\n"
    assert info.value.stderr == b"e\n"
    assert list(info.value.cmd) == sh("echo o; echo e >&2; exit 3")


def test_check_signal_death():
    with pytest.raises(subprocess.CalledProcessError) as info:
        nsbox.run(sh("kill -TERM $$"), check=True)
    assert info.value.returncode == -signal.SIGTERM


def test_check_success_returns_result():
    r = nsbox.run(["true"], check=True)
    assert r.returncode == 0


def test_timeout_kills_everything(procs, marker, sleep_marker):
    script = f"sleep {sleep_marker} & sleep {sleep_marker} & echo started; wait"
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as info:
        nsbox.run(sh(script, marker), timeout=1.0, capture_output=True)
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 10
    assert info.value.timeout == 1.0
    # The whole sandbox was killed and reaped before the exception: nothing left.
    assert procs.marked(marker, sleep_marker) == []
    assert b"started" in (info.value.stdout or b"")


def test_timeout_without_pipes(procs, marker, sleep_marker):
    with pytest.raises(subprocess.TimeoutExpired):
        nsbox.run(sh(f"sleep {sleep_marker}; :", marker), timeout=0.3)
    assert procs.marked(marker, sleep_marker) == []


def test_timeout_not_reached():
    r = nsbox.run(["echo", "quick"], timeout=30, capture_output=True)
    assert r.stdout == b"quick\n"


def test_command_exit_ends_the_whole_sandbox(procs, marker, sleep_marker):
    # A daemonized grandchild holding stdout open dies with the command: run() returns
    # at once with the command's status, and nothing is left behind.
    script = f"(sleep {sleep_marker} &) ; exit 4"
    t0 = time.monotonic()
    r = nsbox.run(sh(script, marker), timeout=30, capture_output=True)
    assert r.returncode == 4
    assert time.monotonic() - t0 < 10
    assert procs.marked(marker, sleep_marker) == []


# -- environment, cwd ------------------------------------------------------------------


def test_env_replaces():
    r = nsbox.run(["env"], env={"NSBX_A": "1", "NSBX_B": "two words"}, capture_output=True)
    assert sorted(r.stdout.decode().splitlines()) == ["NSBX_A=1", "NSBX_B=two words"]


def test_env_empty():
    r = nsbox.run(["/usr/bin/env"], env={}, capture_output=True)
    assert r.returncode == 0
    assert r.stdout == b""


def test_env_none_inherits(monkeypatch, marker):
    monkeypatch.setenv("NSBX_INHERITED", marker)
    r = nsbox.run(sh('printf %s "$NSBX_INHERITED"'), capture_output=True)
    assert r.stdout.decode() == marker


def test_env_awkward_values():
    env = {"NSBX_NL": "a\nb", "NSBX_EQ": "x=y=z", "NSBX_EMPTY": "", "NSBX_U": "\u00e9\u4e2d"}
    r = nsbox.run(["env", "-0"], env=env, capture_output=True)
    got = dict(item.split("=", 1) for item in r.stdout.decode().split("\0") if item)
    assert got == env


def test_path_is_searched_inside():
    r = nsbox.run(["echo", "x"], env={"PATH": "/usr/bin:/bin"}, capture_output=True)
    assert r.stdout == b"x\n"


def test_cwd():
    r = nsbox.run(["pwd"], cwd="/usr", capture_output=True, text=True)
    assert r.stdout == "/usr\n"


def test_cwd_pathlike(tmp_path):
    r = nsbox.run(["pwd"], cwd=tmp_path, mounts=[nsbox.Bind(str(tmp_path))],
                  capture_output=True, text=True)
    assert r.stdout == f"{tmp_path}\n"


# -- pass_fds -----------------------------------------------------------------------


def test_pass_fds_reaches_command():
    r, w = os.pipe()
    try:
        # dash redirects only fds 0-9: write through /proc/self/fd instead.
        res = nsbox.run(sh(f"echo through-fd > /proc/self/fd/{w}"), pass_fds=[w])
        os.close(w)
        w = -1
        assert res.returncode == 0
        assert os.read(r, 100) == b"through-fd\n"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_only_stdio_and_passed_fds_reach_command():
    passed_r, passed_w = os.pipe()
    # An inheritable fd, far above what ls will open, that is NOT passed.
    hidden = os.open(os.devnull, os.O_RDONLY)
    high = os.dup2(hidden, 150)
    os.set_inheritable(high, True)
    try:
        r = nsbox.run(["ls", "/proc/self/fd"], pass_fds=[passed_w], capture_output=True,
                      text=True)
        assert r.returncode == 0, r.stderr
        fds = {int(x) for x in r.stdout.split()}
        assert {0, 1, 2, passed_w} <= fds
        assert high not in fds
        assert hidden not in fds or hidden == 3  # 3 may be ls's own directory fd
        extra = fds - {0, 1, 2, passed_w}
        assert len(extra) <= 1, fds  # ls's directory fd
    finally:
        for fd in (passed_r, passed_w, hidden, high):
            os.close(fd)


def test_no_fds_passed_by_default():
    r = nsbox.run(sh("for f in /proc/$$/fd/*; do echo ${f##*/}; done"), capture_output=True,
                  text=True)
    fds = {int(x) for x in r.stdout.split()}
    assert fds <= {0, 1, 2, 3}, fds  # at most the shell's directory fd for the glob


# -- Result --------------------------------------------------------------------------


def test_result_fields():
    args = ["sh", "-c", "echo o; echo e >&2; exit 5"]
    r = nsbox.run(args, capture_output=True)
    assert isinstance(r, nsbox.Result)
    assert isinstance(r, subprocess.CompletedProcess)
    assert list(r.args) == args
    assert r.returncode == 5
    assert r.stdout == b"o\n"
    assert r.stderr == b"e\n"
    assert isinstance(r.pid, int) and r.pid > 0
    assert r.pid != os.getpid()
    with pytest.raises(subprocess.CalledProcessError):
        r.check_returncode()


def test_result_without_capture():
    r = nsbox.run(["true"])
    assert r.stdout is None and r.stderr is None


def test_spec_accepted_as_args():
    spec = nsbox.Spec(["sh", "-c", "hostname"], hostname="from-spec")
    r = nsbox.run(spec, capture_output=True, text=True)
    assert r.stdout == "from-spec\n"
    r2 = nsbox.run(spec, hostname="overridden", capture_output=True, text=True)
    assert r2.stdout == "overridden\n"


# -- awkward arguments -------------------------------------------------------------

AWKWARD = [
    "with space",
    "  leading and trailing  ",
    "'single'",
    '"double"',
    "back\\slash",
    "new\nline",
    "tab\there",
    "",
    "$HOME",
    "`echo no`",
    "$(echo no)",
    "*",
    "-n",
    "--",
    ";|&<>",
    "\u00e9\u4e2d\U0001f600",
    "x" * 10000,
]


def _roundtrip(args) -> list[bytes]:
    r = nsbox.run(["printf", "%s\\0", *args], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(b"\0")
    return r.stdout.split(b"\0")[:-1]


def test_awkward_arguments_roundtrip():
    assert _roundtrip(AWKWARD) == [os.fsencode(a) for a in AWKWARD]


def test_non_utf8_bytes_arguments():
    args = [b"\xff\xfe", b"caf\xe9", b"\x80abc", b"ok"]
    assert _roundtrip(args) == args


def test_surrogateescape_str_arguments():
    args = [os.fsdecode(b"\xff\xfe"), os.fsdecode(b"a\x80b")]
    assert _roundtrip(args) == [b"\xff\xfe", b"a\x80b"]


def test_empty_arguments():
    assert _roundtrip(["", "", "x", ""]) == [b"", b"", b"x", b""]


def test_very_many_arguments():
    args = [f"a{i}" for i in range(20000)]
    assert _roundtrip(args) == [a.encode() for a in args]


def test_arguments_through_shell_positional():
    args = ["a b", "", "c\nd", "*"]
    r = nsbox.run(sh('for a in "$@"; do printf "%s\\0" "$a"; done', *args), capture_output=True)
    assert r.stdout.split(b"\0")[:-1] == [a.encode() for a in args]


def test_awkward_env_and_hostname_through_printf():
    r = nsbox.run(sh('printf "%s\\0" "$NSBX_V"'), env={"NSBX_V": "a b\nc'\"d"},
                  capture_output=True)
    assert r.stdout == b"a b\nc'\"d\0"


def test_bytes_env_and_non_utf8_values():
    r = nsbox.run(["sh", "-c", 'printf "%s" "$NSBX_RAW"'], env={b"NSBX_RAW": b"\xffraw\x80"},
                  capture_output=True)
    assert r.stdout == b"\xffraw\x80"


# -- text options ------------------------------------------------------------------------


def test_encoding_and_errors():
    r = nsbox.run(["printf", "caf\\351"], capture_output=True, encoding="latin-1")
    assert r.stdout == "caf\u00e9"
    r = nsbox.run(["printf", "a\\377b"], capture_output=True, text=True, errors="replace")
    assert r.stdout == "a\ufffdb"


def test_universal_newlines():
    r = nsbox.run(["printf", "a\\r\\nb\\rc\\n"], capture_output=True, universal_newlines=True)
    assert r.stdout == "a\nb\nc\n"


# -- whatever interrupts run(), the sandbox goes -----------------------------------------


class _Interrupt(Exception):
    pass


def test_exception_during_run_kills_the_sandbox(procs, marker, sleep_marker):
    def boom(*_):
        raise _Interrupt

    previous = signal.signal(signal.SIGUSR1, boom)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(_Interrupt):
            nsbox.run(sh(f"sleep {sleep_marker} & sleep {sleep_marker}; :", marker),
                      capture_output=True, timeout=60)
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGUSR1, previous)
    assert procs.marked(marker, sleep_marker) == []


def test_timeout_kills_new_sessions_and_double_forks(procs, marker, sleep_marker):
    script = (f"setsid sleep {sleep_marker} & (sleep {sleep_marker} &) & "
              f"sh -c 'sleep {sleep_marker} & exit 0' & wait; sleep {sleep_marker}")
    with pytest.raises(subprocess.TimeoutExpired):
        nsbox.run(sh(script, marker), timeout=1.0, capture_output=True)
    assert procs.marked(marker, sleep_marker) == []


def test_command_killed_from_the_host_reports_the_signal(procs, sleep_marker):
    with nsbox.Sandbox(["sleep", sleep_marker]) as box:
        found = procs.wait_present(sleep_marker, count=2)  # init's argv and sleep's
        command = [p for p in found if p != box.pid]
        assert len(command) == 1
        os.kill(command[0], signal.SIGKILL)
        assert box.wait(timeout=20) == -signal.SIGKILL


@pytest.mark.parametrize("closed", [0, 1])
def test_a_caller_with_stdin_or_stdout_closed(closed):
    # Its new fds land on 0-2: none may end up where the sandbox's stdio goes,
    # and init must not take its own signal fd for one (it spun on POLLNVAL).
    code = textwrap.dedent(f"""
        import os, sys, nsbox
        os.close({closed})
        r = nsbox.run(["sh", "-c", "cat; echo out; echo err >&2"], input=b"in\\n",
                      capture_output=True)
        t = nsbox.run(["true"])
        os.write(2, repr((r.returncode, r.stdout, r.stderr, t.returncode)).encode())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.stderr.decode().endswith("(0, b'in\\nout\\n', b'err\\n', 0)"), done.stderr


def test_timeouts_of_weeks_or_infinity_as_subprocess_allows():
    assert nsbox.run(["true"], timeout=30 * 86400).returncode == 0
    assert nsbox.run(["true"], timeout=float("inf")).returncode == 0
    assert nsbox.run(["cat"], input=b"x", capture_output=True, timeout=1e10).stdout == b"x"
    with nsbox.Sandbox(["true"]) as box:
        assert box.wait(timeout=1e12) == 0


def test_no_namespaces_at_all():
    # An unprivileged caller cannot lower its capability bounding set without
    # a user namespace, and needs not (no_new_privs): it runs all the same.
    r = nsbox.run(["sh", "-c", "grep NoNewPrivs /proc/self/status"], namespaces=[],
                  capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == ["NoNewPrivs:", "1"], r

