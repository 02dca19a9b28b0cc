"""What `python -m nsbox run` imports: its start-up is part of every sandbox from a shell."""

from __future__ import annotations

import subprocess
import sys

import nsbox
from nsbox import _process

HEAVY = ("subprocess", "argparse", "dataclasses", "selectors", "trio", "pyroute2", "psutil")


def test_stdio_constants_are_subprocess_values():
    assert (_process.PIPE, _process.STDOUT, _process.DEVNULL) == (
        subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL)
    assert (nsbox.PIPE, nsbox.STDOUT, nsbox.DEVNULL) == (
        subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL)


def test_result_is_a_completed_process():
    assert issubclass(nsbox.Result, subprocess.CompletedProcess)


def test_cli_path_imports_nothing_heavy():
    # Modules the interpreter itself loaded at start-up are not ours to count.
    code = (
        "import sys\n"
        f"heavy = {HEAVY!r}\n"
        "before = {m for m in heavy if m in sys.modules}\n"
        "from nsbox import _cli\n"
        "spec, timeout, fd = _cli.parse_run(['--hostname', 'box', '--bind', '/a:/b', '--', 'x'])\n"
        "print(sorted({m for m in heavy if m in sys.modules} - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
