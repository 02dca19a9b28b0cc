"""_cgroup against fake cgroupfs trees in tmp_path: never the real /sys/fs/cgroup.

The trees are plain directories and files laid out as the kernel documents
them. Unlike cgroupfs they do not grow interface files on mkdir nor drop them
on rmdir: _write creates files (O_CREAT), and tests delete files to simulate
rmdir of a real cgroup.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pathlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsbox import LimitError, UnsupportedError
from nsbox import _cgroup as C
from nsbox._spec import MIN_CPUS, Limits

V1_MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:7 master:1 - cgroup cgroup rw,cpu,cpuacct
60 22 0:32 / /mnt/mem\\040again rw,relatime - cgroup cgroup rw,memory
61 22 0:38 /docker/abc /mnt/second rw - cgroup2 cgroup2 rw
"""
V2_MOUNTINFO = ("29 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - "
                "cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n")
NAME = re.compile(r"nsbx-(\d+)-(\d+)-(\d+)")
SYSTEMD = "/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope"
V1_JOIN = "tasks"  # the file GroupV1.open opens: the child writes "0" to it
UID = 4242  # the "user" when the tests run as root (uid checks need a non-zero euid)


def put(d: pathlib.Path, **files: str) -> pathlib.Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name.replace("_", ".", 1)).write_text(text)  # cgroup_procs: cgroup.procs
    return d


def make_v2(root: pathlib.Path, controllers="cpu io memory pids", subtree="cpu memory pids"):
    return put(root, cgroup_controllers=controllers + "\n", cgroup_subtree_control=subtree + "\n",
               cgroup_procs="", cgroup_threads="", memory_stat="anon 0\n")


def host2(root, own=None, euid=0) -> C.Host:
    return C.Host([C.Hierarchy(2, str(root))], {"": "/"} if own is None else own, euid)


def v1_hierarchies(base: pathlib.Path, names=("memory", "pids", "cpu")) -> list[C.Hierarchy]:
    roots = {"memory": {"memory_limit_in_bytes": "9223372036854771712\n"},
             "pids": {}, "cpu": {"cpu_cfs_period_us": "100000\n", "cpu_cfs_quota_us": "-1\n"}}
    return [C.Hierarchy(1, str(put(base / n, cgroup_procs="", tasks="", **roots[n])), "/",
                        frozenset({n})) for n in names]


def tree(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() if p.is_file() else "/"
            for p in sorted(root.rglob("*"))}


def check_name(name: str) -> None:
    m = NAME.fullmatch(name)
    assert name.startswith(C.PREFIX) and m, name
    assert int(m[1]) == os.getpid() and m[2] == C._start_time("self")


# -- parsing ---------------------------------------------------------------------------


def test_parse_mountinfo_v1_hybrid_host():
    hs = C.parse_mountinfo(V1_MOUNTINFO)
    got = [(h.version, h.mountpoint, h.root, sorted(h.controllers)) for h in hs]
    assert got == [
        (1, "/sys/fs/cgroup/cpu", "/", ["cpu"]),
        (1, "/sys/fs/cgroup/memory", "/", ["memory"]),
        (2, "/sys/fs/cgroup/unified", "/", []),  # the second cgroup2 mount is dropped
        (1, "/sys/fs/cgroup/cpu,cpuacct", "/", ["cpu", "cpuacct"]),
    ]  # name=systemd, ext4, tmpfs and the second memory mount are skipped
    h = C.Host(hs, {}, 0)
    assert h.v1["cpu"].mountpoint == "/sys/fs/cgroup/cpu"  # first mount of a controller
    assert h.v1["cpuacct"].mountpoint == "/sys/fs/cgroup/cpu,cpuacct"


def test_parse_mountinfo_pure_v2_and_escapes():
    [h] = C.parse_mountinfo(V2_MOUNTINFO + "garbage line\n\n")
    assert (h.version, h.mountpoint, h.root, h.controllers) == (2, "/sys/fs/cgroup", "/",
                                                                frozenset())
    [h] = C.parse_mountinfo("61 22 0:38 /a\\040b /mnt/my\\040cg\\011x rw - cgroup2 none rw\n")
    assert (h.root, h.mountpoint) == ("/a b", "/mnt/my cg\tx")


def _escape(s: str) -> str:
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in s)


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("\t\n")),
       st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=8))
def test_parse_mountinfo_unescapes_what_the_kernel_escapes(mountpoint, root):
    line = f"41 31 0:38 /{_escape(root)} /{_escape(mountpoint)} rw shared:9 - cgroup2 cgroup2 rw"
    [h] = C.parse_mountinfo(line)
    assert (h.mountpoint, h.root) == ("/" + mountpoint, "/" + root)


def test_host_read_from_files(tmp_path):
    put(tmp_path, mountinfo=V1_MOUNTINFO, cgroup="4:memory:/a\n0::/\n")
    h = C.Host.read(str(tmp_path / "mountinfo"), str(tmp_path / "cgroup"))
    assert h.v2.mountpoint == "/sys/fs/cgroup/unified" and h.own == {"memory": "/a", "": "/"}
    assert h.euid == os.geteuid()
    empty = C.Host.read(str(tmp_path / "missing"), str(tmp_path / "missing"))
    assert (empty.v2, empty.v1, empty.own) == (None, {}, {})


def test_host_read_keeps_non_ascii_mountpoints(tmp_path):
    line = "41 31 0:38 / /mnt/cgröup rw - cgroup2 cgroup2 rw\n"
    (tmp_path / "mountinfo").write_bytes(line.encode())
    h = C.Host.read(str(tmp_path / "mountinfo"), str(tmp_path / "none"))
    assert h.v2.mountpoint == "/mnt/cgröup"
    # Bytes that are not UTF-8 round-trip to the same file name.
    (tmp_path / "mountinfo").write_bytes(b"41 31 0:38 / /mnt/cg\xff rw - cgroup2 cgroup2 rw\n")
    h = C.Host.read(str(tmp_path / "mountinfo"), str(tmp_path / "none"))
    assert os.fsencode(h.v2.mountpoint) == b"/mnt/cg\xff"


def test_parse_proc_cgroup():
    text = ("9:name=systemd:/user.slice\n4:memory:/process_api/abc\n1:cpu,cpuacct:/x\n"
            "0::/user.slice/user-1000.slice/session-2.scope\nbad\n")
    assert C.parse_proc_cgroup(text) == {
        "memory": "/process_api/abc", "cpu": "/x", "cpuacct": "/x",
        "": "/user.slice/user-1000.slice/session-2.scope"}
    assert C.parse_proc_cgroup("0::/a:b\n") == {"": "/a:b"}  # a colon in the path


PART = st.text("abcxyz-_.@0123456789", min_size=1, max_size=6).filter(lambda s: s not in ".")


@given(st.lists(PART, max_size=3), st.lists(PART, max_size=3))
def test_hierarchy_path(root_parts, rel_parts):
    root, rel = "/" + "/".join(root_parts), "/".join(rel_parts)
    h = C.Hierarchy(1, "/mnt/cg", root, frozenset({"memory"}))
    assert h.path(root) == "/mnt/cg"
    assert h.path(root.rstrip("/") + "/" + rel) == ("/mnt/cg/" + rel).rstrip("/")
    if root_parts:  # outside a non-root mount root: a sibling, the parent
        assert h.path(root + "x") is None
        assert h.path(root.rsplit("/", 1)[0] or "/") is None
    assert C.Hierarchy(2, "/sys/fs/cgroup/").path("/a/b") == "/sys/fs/cgroup/a/b"


# -- v2 ----------------------------------------------------------------------------------


def test_v2_create_in_its_own_parent(tmp_path):
    root = make_v2(tmp_path / "cg2")
    before = (root / "cgroup.subtree_control").read_text()
    group = C.create(Limits(memory="64M", memory_swap="96M", pids=20, cpus=0.5), host2(root))
    try:
        assert isinstance(group, C.GroupV2) and group.procs_fds() == []
        d = pathlib.Path(group.dirs[0])
        assert d.parent == root / "nsbox"
        check_name(d.name)
        assert {f: (d / f).read_text() for f in os.listdir(d)} == {
            "memory.max": "67108864", "memory.swap.max": "33554432", "pids.max": "20",
            "cpu.max": "50000 100000"}
        enabled = (root / "nsbox" / "cgroup.subtree_control").read_text().split()
        assert sorted(enabled) == ["+cpu", "+memory", "+pids"]
        assert (root / "cgroup.subtree_control").read_text() == before
        fd = group.dirfd()
        assert fd >= 0 and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH
        assert os.path.samestat(os.fstat(fd), os.stat(d))
    finally:
        group.close_fds()
    assert group.dirfd() == -1


@pytest.mark.parametrize(("swap", "expect"), [(None, None), (-1, "max"), ("64M", "0")])
def test_v2_swap(tmp_path, swap, expect):
    root = make_v2(tmp_path / "cg2")
    group = C.create(Limits(memory="64M", memory_swap=swap), host2(root))
    group.close_fds()
    f = pathlib.Path(group.dirs[0], "memory.swap.max")
    assert (f.read_text() if f.exists() else None) == expect


@given(st.integers(1, 2**20), st.one_of(st.none(), st.just(-1), st.integers(0, 2**20)),
       st.floats(MIN_CPUS, os.cpu_count() or 1))
def test_v2_limit_files(mib, extra, cpus):
    memory_swap = extra if extra in (None, -1) else (mib + extra) << 20
    lim = Limits(memory=mib << 20, memory_swap=memory_swap, cpus=cpus)
    files = dict(C._v2_limit_files(lim, "/nonexistent/nsbx-x"))
    assert files.pop("memory.max") == str(mib << 20)
    swap = None if extra is None else "max" if extra == -1 else str(extra << 20)
    assert files.pop("memory.swap.max", None) == swap  # docker's memory_swap less memory
    quota, period = map(int, files.pop("cpu.max").split())
    assert period == 100000 and 1000 <= quota <= (os.cpu_count() or 1) * period
    assert files == {}


def test_v2_no_swap_unless_asked_when_the_kernel_has_swap(tmp_path):
    (tmp_path / "memory.swap.max").write_text("max\n")  # a new cgroup, swap controller on
    assert ("memory.swap.max", "0") in C._v2_limit_files(Limits(memory="8M"), str(tmp_path))


def test_v2_stats_and_kill(tmp_path):
    group = C.create(Limits(memory="64M"), host2(make_v2(tmp_path / "cg2")))
    group.close_fds()
    d = pathlib.Path(group.dirs[0])
    stats = (group.oom_kills, group.peak_memory, group.pids_peak, group.memory_current)
    assert [f() for f in stats] == [None] * 4
    put(d, memory_events="low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n", memory_peak="123456\n",
        pids_peak="7\n", memory_current="4096\n", cgroup_procs="12\n34\n")
    assert [f() for f in stats] == [1, 123456, 7, 4096]
    put(d, memory_events="low 0\n", memory_peak="\n")
    assert (group.oom_kills(), group.peak_memory()) == (0, None)
    assert group.pids() == [12, 34]
    (d / "cgroup.procs").write_text("")  # kill() must not fall back to signalling pids
    group.kill()
    assert (d / "cgroup.kill").read_text() == "1"


def test_v2_remove(tmp_path):
    h = host2(make_v2(tmp_path / "cg2"))
    group = C.create(Limits(pids=3), h)
    d = pathlib.Path(group.dirs[0])
    with pytest.raises(LimitError) as info:  # files left: not a cgroup's rmdir
        group.remove()
    assert info.value.errno == errno.ENOTEMPTY and not group.removed
    for f in d.iterdir():  # what the kernel does: interface files go with the directory
        f.unlink()
    group.remove()
    assert not d.exists() and group.removed and group.dirfd() == -1
    group.remove()  # idempotent
    # The kernel gives nsbox's parent (made by the first create) the root's controllers:
    # nsbox reads them there, as the directory is its own.
    (pathlib.Path(h.v2.mountpoint, "nsbox", "cgroup.controllers")).write_text("cpu memory pids\n")
    gone = C.create(Limits(pids=3), h)
    for f in pathlib.Path(gone.dirs[0]).iterdir():
        f.unlink()
    os.rmdir(gone.dirs[0])
    gone.remove()
    assert gone.removed and gone.dirfd() == -1


def test_v2_missing_controller_creates_nothing(tmp_path):
    root = make_v2(tmp_path / "cg2", subtree="cpu pids")
    before = tree(root)
    with pytest.raises(UnsupportedError, match="memory"):
        C.create(Limits(memory="64M"), host2(root))
    assert tree(root) == before


def test_v2_explicit_parent(tmp_path):
    root = make_v2(tmp_path / "cg2")
    before = (root / "cgroup.subtree_control").read_text()
    group = C.create(Limits(pids=5, memory="8M", cgroup_parent="/ci/jobs"), host2(root))
    group.close_fds()
    assert pathlib.Path(group.dirs[0]).parent == root / "ci" / "jobs"
    for d in (root / "ci", root / "ci" / "jobs"):
        assert sorted((d / "cgroup.subtree_control").read_text().split()) == ["+memory", "+pids"]
    assert (root / "cgroup.subtree_control").read_text() == before


def systemd_tree(tmp_path: pathlib.Path, blocked: bool) -> tuple[pathlib.Path, int]:
    """The user@1000.service subtree is the user's; above it (if `blocked`) root's."""
    root = make_v2(tmp_path / "cg2")
    d, dirs = root, []
    for part in SYSTEMD.strip("/").split("/"):
        d = make_v2(d / part, controllers="cpu memory pids", subtree="")
        dirs.append(d)
    owned = dirs[2:] if blocked else [root, *dirs]
    if blocked:  # what a non-root caller cannot write; as root, ownership tells
        (dirs[1] / "cgroup.subtree_control").chmod(0o444)
    if os.geteuid() != 0:
        return root, os.geteuid()
    try:
        for p in owned:
            for q in (p, *p.iterdir()):
                if q in owned or q.is_file():
                    os.chown(q, UID, UID)
    except OSError as exc:  # root in a user namespace that maps no other uid
        pytest.skip(f"cannot give the tree to uid {UID}: {exc}")
    return root, UID


def test_delegated_v2(tmp_path):
    root, euid = systemd_tree(tmp_path / "a", blocked=True)
    assert host2(root, {"": SYSTEMD}, euid).delegated_v2() == SYSTEMD.rsplit("/", 2)[0]
    assert host2(root, {}, euid).delegated_v2() is None
    # Every ancestor the caller's (a tmp tree as non-root): the walk goes to the top.
    root, euid = systemd_tree(tmp_path / "b", blocked=False)
    assert host2(root, {"": SYSTEMD}, euid).delegated_v2() == "/"


def test_v2_create_unprivileged_in_delegated_subtree(tmp_path):
    root, euid = systemd_tree(tmp_path, blocked=True)
    before = tree(root / "user.slice")
    service = root / "user.slice/user-1000.slice/user@1000.service"
    group = C.create(Limits(memory="8M", pids=4), host2(root, {"": SYSTEMD}, euid))
    group.close_fds()
    assert pathlib.Path(group.dirs[0]).parent == service / "nsbox"
    for d in (service, service / "nsbox"):
        assert sorted((d / "cgroup.subtree_control").read_text().split()) == ["+memory", "+pids"]
    after = tree(root / "user.slice")
    changed = {k for k in after if before.get(k) != after[k]}
    assert all(k.startswith("user-1000.slice/user@1000.service/") for k in changed), changed


# -- v1 ----------------------------------------------------------------------------------


def test_v1_create(tmp_path):
    hs = v1_hierarchies(tmp_path)
    group = C.create(Limits(memory="50M", pids=20, cpus=0.25), C.Host(hs, {}, 0))
    try:
        assert isinstance(group, C.GroupV1) and len(group.procs_fds()) == 3
        dirs = [pathlib.Path(d) for d in group.dirs]
        assert sorted(d.parent for d in dirs) == sorted(pathlib.Path(h.mountpoint, "nsbox")
                                                        for h in hs)
        files = {f: (d / f).read_text() for d in dirs for f in os.listdir(d)}
        assert files == {"memory.limit_in_bytes": "52428800", "pids.max": "20",
                         "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "25000",
                         V1_JOIN: ""}  # (made by open(): cgroupfs has it from mkdir)
        for fd, d in zip(group.procs_fds(), group.dirs, strict=True):
            assert os.readlink(f"/proc/self/fd/{fd}") == os.path.join(d, V1_JOIN)
    finally:
        group.close_fds()


def test_default_parent_inside_a_container(tmp_path):
    # A container that sees only its own subtree: the mount's root is not /.
    hs = [C.Hierarchy(1, h.mountpoint, "/docker/abc", h.controllers)
          for h in v1_hierarchies(tmp_path, ("pids",))]
    group = C.create(Limits(pids=20), C.Host(hs, {}, 0))
    try:
        assert os.path.dirname(group.dirs[0]) == os.path.join(hs[0].mountpoint, "nsbox")
    finally:
        group.close_fds()
    hs.append(C.Hierarchy(2, str(make_v2(tmp_path / "v2")), "/docker/abc"))
    group = C.create(Limits(pids=20), C.Host(hs, {}, 0))  # v2 has pids: v2 is chosen
    try:
        assert os.path.dirname(group.dirs[0]) == os.path.join(hs[1].mountpoint, "nsbox")
    finally:
        group.close_fds()
    v2 = C.create(Limits(cgroup_parent="/docker/abc/ci"), C.Host(hs[1:], {}, 0))
    try:
        assert os.path.dirname(v2.dirs[0]) == os.path.join(hs[1].mountpoint, "ci")
    finally:
        v2.close_fds()


def test_v1_limit_files(tmp_path):
    lim = Limits(memory="50M", pids=20, cpus=0.25)
    assert C._v1_limit_files(lim, "memory", str(tmp_path)) == [
        ("memory.limit_in_bytes", "52428800")]  # no swap accounting: no memsw file
    assert C._v1_limit_files(lim, "pids", str(tmp_path)) == [("pids.max", "20")]
    assert C._v1_limit_files(lim, "cpu", str(tmp_path)) == [
        ("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "25000")]
    assert C._v1_limit_files(lim, "cpuacct", str(tmp_path)) == []
    (tmp_path / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    assert C._v1_limit_files(lim, "memory", str(tmp_path))[1] == (
        "memory.memsw.limit_in_bytes", "52428800")  # memory plus no swap
    swap = Limits(memory="50M", memory_swap="60M")
    assert C._v1_limit_files(swap, "memory", str(tmp_path))[1] == (
        "memory.memsw.limit_in_bytes", "62914560")


def test_v1_swap_needs_swap_accounting(tmp_path):
    [h] = v1_hierarchies(tmp_path, ("memory",))
    with pytest.raises(UnsupportedError, match="swap accounting"):
        C.create(Limits(memory="50M", memory_swap="60M"), C.Host([h], {}, 0))
    assert os.listdir(tmp_path / "memory" / "nsbox") == []  # the new cgroup was removed


def test_v1_group_fds_and_stats(tmp_path):
    hs = v1_hierarchies(tmp_path)
    dirs = [str(put(pathlib.Path(h.mountpoint, "nsbx-t"), cgroup_procs="", tasks=""))
            for h in hs]
    group = C.GroupV1(dirs, Limits(), {n: d for n, d in zip(("memory", "pids", "cpu"), dirs,
                                                             strict=True)})
    group.open()
    try:
        fds = group.procs_fds()
        assert [os.readlink(f"/proc/self/fd/{fd}") for fd in fds] == [
            os.path.join(d, V1_JOIN) for d in dirs]
        assert all(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY for fd in fds)
    finally:
        group.close_fds()
    assert group.procs_fds() == [] and group.dirfd() == -1
    stats = (group.oom_kills, group.peak_memory, group.pids_peak, group.memory_current)
    assert [f() for f in stats] == [None] * 4
    put(pathlib.Path(dirs[0]), memory_oom_control="oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        memory_max_usage_in_bytes="5242880\n", memory_usage_in_bytes="4096\n")
    put(pathlib.Path(dirs[1]), pids_peak="9\n")
    assert [f() for f in stats] == [2, 5242880, 9, 4096]
    assert C.GroupV1(dirs[2:], Limits(), {"cpu": dirs[2]}).oom_kills() is None


# -- choosing a backend ------------------------------------------------------------------


def test_choose(tmp_path):
    v1 = v1_hierarchies(tmp_path / "v1")
    both = C.Host([C.Hierarchy(2, str(make_v2(tmp_path / "full"))), *v1], {}, 0)
    assert C._choose(Limits(memory="8M", pids=5, cpus=1), both) == (2, "/nsbox")
    # This machine's layout: an empty cgroup2 next to the v1 controllers.
    empty = make_v2(tmp_path / "unified", controllers="", subtree="")
    hybrid = C.Host([C.Hierarchy(2, str(empty)), *v1], {}, 0)
    # ("": each v1 hierarchy's own default parent, /nsbox below its mount's root)
    assert C._choose(Limits(memory="8M", pids=5), hybrid) == (1, "")
    assert C._choose(Limits(pids=5, cgroup_parent="/ci"), hybrid) == (1, "/ci")
    assert C._choose(Limits(cgroup_parent="/ci/jobs"), hybrid) == (2, "/ci/jobs")
    assert C._choose(Limits(cgroup_parent="/ci"), C.Host(v1, {}, 0)) == (1, "/ci")
    mem_only = C.Host([C.Hierarchy(2, str(make_v2(tmp_path / "m", subtree="memory"))), v1[0]],
                      {}, 0)
    with pytest.raises(UnsupportedError, match="cgroup v2 lacks cpu, pids; cgroup v1 lacks cpu, "
                       "pids"):
        C._choose(Limits(memory="8M", pids=5, cpus=1), mem_only)
    with pytest.raises(UnsupportedError, match="outside"):
        C._choose(Limits(pids=5, cgroup_parent="/elsewhere"),
                  C.Host([C.Hierarchy(2, str(tmp_path / "full"), "/docker/abc")], {}, 0))
    with pytest.raises(UnsupportedError, match="none is mounted"):
        C._choose(Limits(pids=5), C.Host([], {}, 0))
    with pytest.raises(UnsupportedError, match="delegated"):  # unprivileged, no delegation
        C._choose(Limits(pids=5), host2(tmp_path / "full", {}, UID))


# -- names and garbage collection --------------------------------------------------------


def test_new_name_unique():
    names = [C._new_name() for _ in range(50)]
    assert len(set(names)) == 50
    for name in names:
        check_name(name)
        assert not C._stale(name)


def test_start_time():
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    start = C._start_time("self")
    assert start == C._start_time(os.getpid()) and C._start_time(999999999) is None
    assert 0 < int(start) <= (uptime + 1) * os.sysconf("SC_CLK_TCK")  # field 22: ticks
    with open("/proc/self/comm") as f:
        comm = f.read().rstrip("\n")
    try:  # a command name with ") " in it
        with open("/proc/self/comm", "w") as f:
            f.write("a) b c")
        assert C._start_time("self") == start
    finally:
        with open("/proc/self/comm", "w") as f:
            f.write(comm)


def test_collect_stale(tmp_path):
    me = f"nsbx-{os.getpid()}-{C._start_time('self')}-1"
    reused = f"nsbx-{os.getpid()}-1{C._start_time('self')}-1"  # our pid, another start
    others = ["nsbx_999999999-1-1", "nsbx-odd", "nsbx-999999999-1-2"]  # not ours, odd, busy
    for name in (me, reused, "nsbx-999999999-1-1", *others):
        (tmp_path / name).mkdir()
    (tmp_path / "nsbx-999999999-1-2" / "cgroup.procs").write_text("")  # still populated
    removed = C.collect_stale(str(tmp_path))
    assert sorted(removed) == sorted(str(tmp_path / n) for n in (reused, "nsbx-999999999-1-1"))
    assert sorted(os.listdir(tmp_path)) == sorted([me, *others])
    assert C.collect_stale(str(tmp_path / "missing")) == []


def test_init_cleanup_argument(tmp_path):
    # What nsbox-init gets to remove the cgroup if the caller dies: the name,
    # then per hierarchy the fd of a file to step out with and the parent's fd.
    hs = v1_hierarchies(tmp_path, ("memory", "pids"))
    for h in hs:
        put(pathlib.Path(h.mountpoint, "nsbox"), tasks="")  # v1 parents have `tasks`
    group = C.create(Limits(memory="64M", pids=5), C.Host(hs, {}, 0))
    try:
        arg, fds = group.init_arg()
        name, *pairs = arg.decode().split(",")
        assert name == os.path.basename(group.dirs[0]) and len(pairs) == 2
        assert sorted(int(x) for p in pairs for x in p.split(":")) == sorted(fds)
        targets = {os.readlink(f"/proc/self/fd/{fd}") for fd in fds}
        assert targets == {p for d in group.dirs for p in (os.path.dirname(d),
                                                            os.path.dirname(d) + "/tasks")}
    finally:
        group.close_fds()
    assert group.init_arg() == (b"-", [])


def test_release_parents_removes_only_empty_default_parents(tmp_path):
    hs = v1_hierarchies(tmp_path, ("pids",))
    host = C.Host(hs, {}, 0)
    group = C.create(Limits(pids=5), host)
    parent = os.path.dirname(group.dirs[0])
    try:
        assert parent not in C.release_parents()  # in use: it stays
        assert os.path.isdir(parent)
    finally:
        group.close_fds()
    for f in os.listdir(group.dirs[0]):  # the kernel drops interface files with the dir
        os.unlink(os.path.join(group.dirs[0], f))
    group.remove()
    assert parent in C.release_parents() and not os.path.exists(parent)
    # A parent the caller named is theirs: never removed.
    named = C.create(Limits(pids=5, cgroup_parent="/ci"), host)
    named.close_fds()
    for f in os.listdir(named.dirs[0]):
        os.unlink(os.path.join(named.dirs[0], f))
    named.remove()
    C.release_parents()
    assert os.path.isdir(os.path.join(hs[0].mountpoint, "ci"))
