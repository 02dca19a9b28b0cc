"""Helpers shared by the rootless and root tiers (imported by their conftest.py files).

Process searches by marker, and a tiny static executable for rootfs tests.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
import uuid

import pytest

MUST_WORK = os.environ.get("NSBOX_MUST_WORK") == "1"

# A Python the sandbox can see: its default /tmp and /dev are its own, so not
# a venv below the host's /tmp (a clone there, or the uid-65534 run's venv).
SANDBOX_PYTHON = (sys.executable if not sys.executable.startswith(("/tmp/", "/dev/"))
                  else "/usr/bin/python3")


def need(ok: bool, why: str) -> None:
    """Skip the test when `ok` is false, or fail it under NSBOX_MUST_WORK=1."""
    if ok:
        return
    if MUST_WORK:
        pytest.fail(f"NSBOX_MUST_WORK=1 but {why}", pytrace=False)
    pytest.skip(why)


def uniq(prefix: str = "nsbx") -> str:
    """A unique name carrying the nsbx prefix (every object a test creates has it)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def children() -> set[int]:
    """Pids of this process's children, from every thread."""
    kids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                kids.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return kids


@pytest.fixture
def data(tmp_path):
    """A host directory with a file in it, readable by everyone (uid 65534 too)."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "hello.txt").write_text("hello from the host\n")
    for p in (tmp_path, d):
        p.chmod(0o755)
    return d


# -- process searches -------------------------------------------------------------


class Procs:
    """Find processes by exact argv elements (markers), and their descendants."""

    @staticmethod
    def cmdline(pid: int) -> list[bytes] | None:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                data = f.read()
        except OSError:
            return None
        return data.split(b"\0")[:-1] if data else []

    def marked(self, *markers: str) -> list[int]:
        """Pids whose argv holds one of `markers` as a whole element."""
        wanted = {m.encode() for m in markers}
        out = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            args = self.cmdline(int(name))
            if args and wanted.intersection(args):
                out.append(int(name))
        return sorted(out)

    def wait_gone(self, *markers: str, timeout: float = 5.0) -> list[int]:
        """Poll until no process carries a marker; the survivors at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.marked(*markers)
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.02)

    def wait_present(self, *markers: str, count: int = 1, timeout: float = 10.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.marked(*markers)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    @staticmethod
    def starttime(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            return None
        return int(stat.rsplit(")", 1)[1].split()[19])

    def tree(self, pid: int) -> set[tuple[int, int]]:
        """(pid, starttime) of `pid` and all its descendants."""
        out: set[tuple[int, int]] = set()
        todo = [pid]
        while todo:
            p = todo.pop()
            st = self.starttime(p)
            if st is None:
                continue
            out.add((p, st))
            try:
                tids = os.listdir(f"/proc/{p}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    with open(f"/proc/{p}/task/{tid}/children") as f:
                        todo.extend(int(c) for c in f.read().split())
                except OSError:
                    pass
        return out

    def alive(self, tree: set[tuple[int, int]]) -> set[tuple[int, int]]:
        """The members of `tree` that still exist (same pid and start time), zombies included."""
        return {(p, st) for p, st in tree if self.starttime(p) == st}

    @staticmethod
    def state(pid: int) -> str | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return None

    children = staticmethod(children)


@pytest.fixture
def procs() -> Procs:
    return Procs()


@pytest.fixture
def marker() -> str:
    """A unique argv element to find this test's processes by."""
    return f"nsbx-test-{uuid.uuid4().hex}"


@pytest.fixture
def sleep_marker() -> str:
    """A unique argument for coreutils sleep (it sums its arguments): about 1000 s."""
    return f"1000.{uuid.uuid4().int % 10**15:015d}"


# -- the CLI ----------------------------------------------------------------------


CLI = [sys.executable, "-m", "nsbox", "run"]


@pytest.fixture
def cli():
    """Run `python -m nsbox run ARGS...` and return the CompletedProcess (bytes)."""

    def run(*args: str, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        return subprocess.run([*CLI, *args], timeout=timeout, **kwargs)

    return run


# -- a tiny static rootfs -----------------------------------------------------------

PROBE_C = r"""
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "ls")) {
        DIR *d = opendir(argv[2]);
        if (!d) { perror(argv[2]); return 1; }
        struct dirent *e;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                printf("%s\n", e->d_name);
        closedir(d);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "exists")) {
        struct stat st;
        return lstat(argv[2], &st) == 0 ? 0 : 1;
    }
    if (argc == 3 && !strcmp(argv[1], "cat")) {
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) { perror(argv[2]); return 1; }
        char buf[4096];
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0)
            fwrite(buf, 1, (size_t)n, stdout);
        return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "pwd")) {
        char buf[4096];
        if (!getcwd(buf, sizeof buf)) { perror("getcwd"); return 1; }
        printf("%s\n", buf);
        return 0;
    }
    fprintf(stderr, "usage: probe ls DIR | exists PATH | cat FILE | pwd\n");
    return 2;
}
"""


def _is_static_elf(path: str) -> bool:
    """An ELF executable without a PT_INTERP program header."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
                return False
            order = "<" if head[5] == 1 else ">"
            phoff, = struct.unpack(order + "Q", head[32:40])
            phentsize, phnum = struct.unpack(order + "HH", head[54:58])
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        p_type, = struct.unpack(order + "I", table[i * phentsize : i * phentsize + 4])
        if p_type == 3:  # PT_INTERP
            return False
    return True


class Probe:
    """A static executable for a rootfs: busybox if the host has a static one, else ours."""

    def __init__(self, path: str, busybox: bool):
        self.path = path
        self.busybox = busybox

    def argv(self, exe: str, op: str, *args: str) -> list[str]:
        if not self.busybox:
            return [exe, op, *args]
        return {
            "ls": lambda: [exe, "ls", "-1A", *args],
            "exists": lambda: [exe, "test", "-e", *args],
            "cat": lambda: [exe, "cat", *args],
            "pwd": lambda: [exe, "pwd"],
        }[op]()


@pytest.fixture(scope="session")
def static_probe(tmp_path_factory) -> Probe:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(candidate) and _is_static_elf(candidate):
            return Probe(candidate, busybox=True)
    cc = shutil.which("cc") or shutil.which("gcc")
    why = "no static busybox and no C compiler for a static probe"
    if cc:
        d = tmp_path_factory.mktemp("probe")
        (d / "probe.c").write_text(PROBE_C)
        res = subprocess.run([cc, "-static", "-O1", "-o", str(d / "probe"), str(d / "probe.c")],
                             capture_output=True, text=True)
        if res.returncode == 0 and _is_static_elf(str(d / "probe")):
            return Probe(str(d / "probe"), busybox=False)
        why = f"cc -static failed: {res.stderr.strip()[-300:]}"
    need(False, why)
