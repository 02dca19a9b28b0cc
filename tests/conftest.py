"""Shared test machinery: tiers, capability checks, hypothesis profiles, leak checks.

Tiers (see shared/DESIGN.md): unit (nothing), native (the built module),
rootless (user namespaces), root (real root in the initial user namespace).
With NSBOX_MUST_WORK=1 (CI) a missing capability fails instead of skipping.
"""

from __future__ import annotations

import functools
import gc
import os
import pathlib
import sys
import time

import pytest
from hypothesis import HealthCheck, settings

# pytest runs with --import-mode=importlib, which puts no test directory on
# sys.path: the shared helpers (tests/nsbx_test_helpers.py) need this.
_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from nsbx_test_helpers import MUST_WORK, need  # noqa: E402
from nsbx_test_helpers import children as _children  # noqa: E402

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
# Unprivileged runs (uid 65534) cannot write a database next to the tests.
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100,
    database=None, print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if MUST_WORK else "default"))


@functools.cache
def userns_problem() -> str | None:
    """None if a default sandbox starts here, else why not."""
    try:
        import nsbox
    except ImportError as exc:
        return f"nsbox is not built: {exc}"
    try:
        nsbox.run(["/bin/true"])
    except nsbox.NsboxError as exc:
        return f"cannot start a sandbox here: {exc}"
    return None


def in_initial_userns() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def is_real_root() -> bool:
    return os.geteuid() == 0 and in_initial_userns()


@pytest.fixture
def userns():
    """Tests that start real sandboxes."""
    problem = userns_problem()
    need(problem is None, problem or "")


@pytest.fixture
def real_root():
    need(is_real_root(), "needs real root in the initial user namespace")


# -- leak checks ----------------------------------------------------------------


def _fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


# nsbox's default parents (kept between spawns, released at exit) are checked
# once, at the end of the session; the rest after every test.
_PARENT_GLOBS = ("/sys/fs/cgroup/*/nsbox", "/sys/fs/cgroup/nsbox")
_CGROUP_GLOBS = ("/sys/fs/cgroup/*/nsbox/nsbx-*", "/sys/fs/cgroup/nsbox/nsbx-*",
                 "/sys/fs/cgroup/*/nsbx-*", "/sys/fs/cgroup/nsbx-*",
                 "/sys/fs/cgroup/*/nsbx-*/nsbx-*", "/sys/fs/cgroup/nsbx-*/nsbx-*")


def _cgroups(globs=_CGROUP_GLOBS) -> set[str]:
    """nsbox's cgroups: the tests' own parents, and sandbox cgroups under
    those or under nsbox's default parents."""
    import glob

    return {path for pattern in globs for path in glob.glob(pattern)}


def _mounts() -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for _ in f)


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail a test that leaves a child process, an fd, a mount or a cgroup behind."""
    if request.node.get_closest_marker("allow_leaks"):
        yield
        return
    gc.collect()
    fds, kids, mounts, cgroups = _fds(), _children(), _mounts(), _cgroups()
    yield
    leaked_fds: set[int] = set()
    leaked_kids: set[int] = set()
    for _ in range(50):  # give finalizers and the kernel a moment
        gc.collect()
        leaked_fds = _fds() - fds
        leaked_kids = _children() - kids
        if not leaked_fds and not leaked_kids:
            break
        time.sleep(0.01)
    problems = []
    if leaked_kids:
        problems.append(f"child processes left: {sorted(leaked_kids)}")
    if leaked_fds:
        problems.append(
            "fds left open: " + ", ".join(f"{fd}->{_fd_target(fd)}" for fd in sorted(leaked_fds))
        )
    if _mounts() != mounts:
        problems.append(f"mount count changed: {mounts} -> {_mounts()}")
    left = _cgroups() - cgroups
    if left:
        problems.append(f"cgroups left: {sorted(left)}")
    if problems:
        pytest.fail("leak: " + "; ".join(problems), pytrace=False)


def pytest_configure(config):
    config.addinivalue_line("markers", "allow_leaks: the test manages its own cleanup checks")


_parents_at_start: set[str] = set()


def pytest_sessionfinish(session, exitstatus):
    """What nsbox does at exit (release its emptied default parents), then
    check that no parent this session made is left."""
    import sys as _sys

    cgroup = _sys.modules.get("nsbox._cgroup")
    if cgroup is not None:
        cgroup.release_parents()
    left = _cgroups(_PARENT_GLOBS) - _parents_at_start
    if left:
        _sys.stderr.write(f"\nleak: cgroup parents left after the session: {sorted(left)}\n")
        session.exitstatus = 1


def pytest_sessionstart(session):
    _parents_at_start.update(_cgroups(_PARENT_GLOBS))
    # nsbox keeps two fds for the life of the process (nsbox-init, our pidfd):
    # open them before the first leak check sees them appear.
    try:
        from nsbox import _native
    except ImportError:
        return
    _native._process_fds()
