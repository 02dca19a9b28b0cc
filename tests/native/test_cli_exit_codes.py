"""The CLI's exit codes for real failures (the CLI has no failure-injection flag).

125: nsbox's own error (setup failure), 126: found but not executable,
127: not found; each with exactly one `nsbox: ` line on stderr.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from nsbox._cli import main

MISSING = "/nonexistent-nsbox-test/cmd"

CASES = [
    # (argv after "run", exit code, text the stderr line must contain)
    (["--", MISSING], 127, f"command not found: {MISSING}"),
    (["--clearenv", "--env", "PATH=/usr/bin:/bin", "--", "nsbox-no-such-command-xyz"], 127,
     "command not found: nsbox-no-such-command-xyz"),
    (["--", "/etc/passwd"], 126, "cannot execute /etc/passwd"),
    (["--", "/etc"], 126, "cannot execute /etc"),
    (["--bind", "/nonexistent-nsbox-src:/x", "--", "/bin/true"], 125,
     "mount (bind /nonexistent-nsbox-src -> /x)"),
    (["--chdir", "/nonexistent-nsbox-dir", "--", "/bin/true"], 125,
     "chdir (cwd /nonexistent-nsbox-dir)"),
    (["--rootfs", "/nonexistent-nsbox-root", "--", "/bin/true"], 125, "root"),
]


def _line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nsbox: "), err
    return lines[0]


def test_main_exit_codes(capsys):
    wrong = []
    for argv, code, needle in CASES:
        got = main(["run", *argv])
        out, err = capsys.readouterr()
        try:
            line = _line(err)
            assert needle in line, (needle, line)
        except AssertionError as exc:
            wrong.append((argv, str(exc)))
        if got != code:
            wrong.append((argv, f"exit {got}, expected {code}"))
    assert not wrong


def test_main_passes_the_commands_status_through(capsys):
    assert main(["run", "--", "/bin/sh", "-c", "exit 7"]) == 7
    assert main(["run", "--", "/bin/sh", "-c", "kill -TERM $$"]) == 128 + 15
    out, err = capsys.readouterr()
    assert err == ""


@pytest.mark.parametrize(("argv", "code", "needle"), [CASES[0], CASES[2], CASES[4]],
                         ids=["127", "126", "125"])
def test_python_m_nsbox_exit_codes(argv, code, needle):
    proc = subprocess.run([sys.executable, "-m", "nsbox", "run", *argv], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    assert needle in _line(proc.stderr)
