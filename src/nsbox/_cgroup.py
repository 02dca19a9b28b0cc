"""cgroup v2 and v1 backends behind one interface.

A sandbox with cgroup limits gets a cgroup of its own, `nsbx-<pid>-<start>-<n>`
under an nsbox parent (default `/nsbox` in each hierarchy for root; under
cgroup v2, unprivileged callers use the subtree systemd delegates to them):

- **v2** (one hierarchy): the child is cloned straight into the cgroup
  (CLONE_INTO_CGROUP), the whole cgroup is killed with `cgroup.kill`.
- **v1** (a hierarchy per controller: memory, pids, cpu): the child writes
  "0" to each hierarchy's `tasks`, opened here, before any setup step,
  and the cgroup is killed pid by pid (pidfds).

Only directories whose names start with `nsbx-` (and the default parent
`nsbox`) are ever written or removed, and created, but for a `cgroup_parent`
the caller named that does not exist yet: that one is made (as docker's
--cgroup-parent does) and stays, the caller's. Cgroups that are not nsbox's
are read at most. The cgroup is removed when the sandbox is reaped; cgroups
left by a process that was killed before it could remove them are removed by
the next nsbox process that uses the same parent. (If the caller dies,
nsbox-init kills the sandbox and removes its cgroup itself, so that is rare.)
nsbox's default parent is removed, when empty, as the process that used it
exits (release_parents).
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time

from ._errors import LimitError, UnsupportedError
from ._spec import CPU_PERIOD_US, Limits

__all__ = ["Hierarchy", "Host", "Group", "parse_mountinfo", "parse_proc_cgroup", "host",
           "create", "release_parents", "PREFIX", "DEFAULT_PARENT"]

PREFIX = "nsbx-"
DEFAULT_PARENT = "/nsbox"
V1_CONTROLLERS = frozenset({
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "blkio",
    "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc",
})
# How long remove() waits for a killed cgroup to empty before giving up.
REMOVE_TIMEOUT = 10.0


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (\\040 for a space...)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


class Hierarchy:
    """One mounted cgroup hierarchy: `version` 1 or 2, where it is mounted,
    the cgroup path its mount shows (`root`), and (v1) its controllers."""

    __slots__ = ("version", "mountpoint", "root", "controllers")

    def __init__(self, version: int, mountpoint: str, root: str = "/",
                 controllers: frozenset[str] = frozenset()):
        self.version = version
        self.mountpoint = mountpoint
        self.root = root
        self.controllers = controllers

    def path(self, cgroup: str) -> str | None:
        """The directory of `cgroup` (a path as in /proc/self/cgroup), or None
        when this mount does not show it."""
        root = self.root.rstrip("/")
        if root and not (cgroup == root or cgroup.startswith(root + "/")):
            return None
        rel = cgroup[len(root):].strip("/")
        return self.mountpoint if not rel else f"{self.mountpoint.rstrip('/')}/{rel}"

    def __repr__(self) -> str:
        ctl = ",".join(sorted(self.controllers))
        return f"Hierarchy(v{self.version} {self.mountpoint} root={self.root} {ctl})"


def parse_mountinfo(text: str) -> list[Hierarchy]:
    """The cgroup hierarchies in /proc/self/mountinfo text, first mount of each."""
    out: list[Hierarchy] = []
    seen: set[tuple[int, frozenset[str]]] = set()
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype, superopts = tail[0], tail[2]
        root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
        if fstype == "cgroup2":
            key = (2, frozenset())
            h = Hierarchy(2, mountpoint, root)
        elif fstype == "cgroup":
            ctl = frozenset(o for o in superopts.split(",") if o in V1_CONTROLLERS)
            if not ctl:
                continue  # a named hierarchy (name=systemd): no controllers
            key = (1, ctl)
            h = Hierarchy(1, mountpoint, root, ctl)
        else:
            continue
        if key not in seen:
            seen.add(key)
            out.append(h)
    return out


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/self/cgroup text -> {controller: path}; the v2 entry under ''."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctl, path = parts
        if not ctl:
            out[""] = path
        for name in ctl.split(","):
            if name and not name.startswith("name="):
                out[name] = path
    return out


def _read(path: str) -> str:
    # Paths in mountinfo and /proc/self/cgroup are the kernel's bytes: decode
    # them as os.fsdecode does, so they round-trip to the same file names.
    with open(path, "rb") as f:
        return os.fsdecode(f.read())


def _write(path: str, value: str) -> None:
    # O_CREAT is a no-op for cgroupfs's files, which exist from mkdir on (a
    # missing one fails with EACCES: see _write_limit); it lets the same code
    # run against a plain directory laid out like cgroupfs, as the tests do.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _keyed(text: str) -> dict[str, int]:
    """'key value' lines (memory.events, memory.oom_control, cpu.stat) -> dict."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            pass
    return out


def _read_int(path: str) -> int | None:
    try:
        return int(_read(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Host:
    """What this host offers: its cgroup hierarchies and the caller's cgroups."""

    def __init__(self, hierarchies: list[Hierarchy], own: dict[str, str], euid: int):
        self.v2 = next((h for h in hierarchies if h.version == 2), None)
        self.v1: dict[str, Hierarchy] = {}
        for h in hierarchies:
            if h.version == 1:
                for ctl in h.controllers:
                    self.v1.setdefault(ctl, h)
        self.own = own
        self.euid = euid

    @classmethod
    def read(cls, mountinfo: str = "/proc/self/mountinfo",
             proc_cgroup: str = "/proc/self/cgroup") -> Host:
        try:
            hierarchies = parse_mountinfo(_read(mountinfo))
        except OSError:
            hierarchies = []
        try:
            own = parse_proc_cgroup(_read(proc_cgroup))
        except OSError:
            own = {}
        return cls(hierarchies, own, os.geteuid())

    # -- v2 ----------------------------------------------------------------------

    def v2_controllers(self, path: str) -> frozenset[str]:
        """Controllers a cgroup v2 directory can give its children."""
        try:
            return frozenset(_read(os.path.join(path, "cgroup.controllers")).split())
        except OSError:
            return frozenset()

    def delegated_v2(self) -> str | None:
        """The cgroup (path as in /proc/self/cgroup) of the topmost v2 subtree
        around the caller that the caller may manage: systemd's delegation
        gives the user the directory and its cgroup.procs/subtree_control."""
        if self.v2 is None or "" not in self.own:
            return None
        best = None
        cg = self.own[""]
        while True:
            d = self.v2.path(cg)
            if d is None or not self._owned(d):
                break
            best = cg
            if cg in ("", "/"):
                break
            cg = cg.rsplit("/", 1)[0] or "/"
        return best

    def _owned(self, d: str) -> bool:
        try:
            st = os.stat(d)
        except OSError:
            return False
        return (st.st_uid == self.euid and os.access(d, os.W_OK)
                and os.access(os.path.join(d, "cgroup.procs"), os.W_OK)
                and os.access(os.path.join(d, "cgroup.subtree_control"), os.W_OK))


_host_lock = threading.Lock()
_host: tuple[int, Host] | None = None


def host() -> Host:
    """The calling process's Host, read once per process."""
    global _host
    pid = os.getpid()
    cached = _host
    if cached is not None and cached[0] == pid:
        return cached[1]
    with _host_lock:
        if _host is None or _host[0] != pid:
            _host = (pid, Host.read())
        return _host[1]


# -- naming and garbage collection ------------------------------------------------

_counter_lock = threading.Lock()
_counter = [0]
_owner: tuple[int, str] | None = None


def _start_time(pid: int | str) -> str | None:
    """Field 22 of /proc/PID/stat (the start time in ticks): pid plus start
    time names a process even after its pid is reused."""
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _new_name() -> str:
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, _start_time("self") or "0")
    with _counter_lock:
        _counter[0] += 1
        n = _counter[0]
    return f"{PREFIX}{pid}-{_owner[1]}-{n}"


def _stale(name: str) -> bool:
    """Whether the nsbox process that made cgroup `name` is gone."""
    parts = name[len(PREFIX):].split("-")
    if len(parts) != 3 or not parts[0].isdigit():
        return False
    return _start_time(parts[0]) != parts[1]


_collected: set[tuple[int, str]] = set()


def collect_stale(parent_dir: str) -> list[str]:
    """Remove the empty cgroups under `parent_dir` that processes killed before
    they could clean up left behind. Returns the directories removed."""
    removed = []
    try:
        names = os.listdir(parent_dir)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(PREFIX) or not _stale(name):
            continue
        path = os.path.join(parent_dir, name)
        try:
            os.rmdir(path)
            removed.append(path)
        except OSError:
            pass  # still populated (or already gone): its init dies with its parent
    return removed


def _collect_once(parent_dir: str) -> None:
    key = (os.getpid(), parent_dir)
    if key not in _collected:
        _collected.add(key)
        collect_stale(parent_dir)


# -- errors ------------------------------------------------------------------------


def _unsupported(message: str, hint: str = "") -> UnsupportedError:
    return UnsupportedError(errno.EOPNOTSUPP, f"nsbox: {message}", hint=hint)


def _limit_error(exc: OSError, what: str, path: str) -> Exception:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UnsupportedError(exc.errno, f"nsbox: cannot {what} {path}: {exc.strerror}",
                                hint="cgroup limits need root, or a delegated cgroup v2 "
                                     "subtree (see cgroup_parent)")
    return LimitError(exc.errno or errno.EIO, f"nsbox: cannot {what} {path}: {exc.strerror}",
                      stage="cgroup", op=path)


def _write_limit(path: str, value: str) -> None:
    try:
        _write(path, value)
    except OSError as exc:
        if not os.path.exists(path):
            raise _unsupported(f"cannot set {os.path.basename(path)}: the cgroup has no such "
                               "file (is its controller enabled?)") from None
        raise _limit_error(exc, f"write {value} to", path) from None


# -- groups ------------------------------------------------------------------------


class Group:
    """One sandbox's cgroup: its directory in each hierarchy used."""

    version = 0

    def __init__(self, dirs: list[str], limits: Limits):
        self.dirs = dirs
        self.limits = limits
        self.removed = False
        self._cleanup: list[tuple[int, int]] = []  # (escape fd, parent dirfd) per dir

    # The parent's side of the spawn: fds for the C spec, closed after the clone.
    def procs_fds(self) -> list[int]:
        return []

    def dirfd(self) -> int:
        return -1

    def open_cleanup(self, escapes: list[str | None]) -> None:
        """Open what nsbox-init needs to remove the cgroup if the caller dies:
        per directory, a file to move itself out with (`escapes`: a tasks or
        cgroup.procs file of a cgroup outside the sandbox's) and the parent."""
        for d, escape in zip(self.dirs, escapes, strict=True):
            fd = -1
            if escape is not None:
                try:
                    fd = os.open(escape, os.O_WRONLY | os.O_CLOEXEC)
                except OSError:
                    continue  # init could not step out: the next nsbox process collects it
            try:
                parent = os.open(os.path.dirname(d), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                if fd >= 0:
                    os.close(fd)
                continue
            self._cleanup.append((fd, parent))

    def init_arg(self) -> tuple[bytes, list[int]]:
        """nsbox-init's CGROUP argument and the fds it needs to inherit."""
        if not self._cleanup:
            return b"-", []
        pairs = ",".join(f"{e}:{p}" for e, p in self._cleanup)
        name = os.fsencode(os.path.basename(self.dirs[0]))
        return name + b"," + pairs.encode(), [fd for pair in self._cleanup for fd in pair
                                              if fd >= 0]

    def close_fds(self) -> None:
        pairs, self._cleanup = self._cleanup, []
        for pair in pairs:
            for fd in pair:
                if fd >= 0:
                    os.close(fd)

    def pids(self) -> list[int]:
        """Host pids of the processes in the cgroup."""
        out: set[int] = set()
        for d in self.dirs:
            try:
                out.update(int(p) for p in _read(os.path.join(d, "cgroup.procs")).split())
            except (OSError, ValueError):
                pass
        return sorted(out)

    def _kill_each(self) -> None:
        """SIGKILL every process in the cgroup, by pidfd, checking first that the
        pid still names a member (a pid read from cgroup.procs may be reused)."""
        for pid in self.pids():
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if self._member(pid):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(fd)

    def _member(self, pid: int) -> bool:
        try:
            text = _read(f"/proc/{pid}/cgroup")
        except OSError:
            return False
        names = {os.path.basename(d) for d in self.dirs}
        return any(line.rsplit("/", 1)[-1] in names for line in text.splitlines())

    def kill(self) -> None:
        self._kill_each()

    def remove(self) -> None:
        """Kill what is left and remove the directories; idempotent."""
        if self.removed:
            return
        self.close_fds()
        deadline = time.monotonic() + REMOVE_TIMEOUT
        pending = list(self.dirs)
        killed = False
        delay = 0.0005
        while pending:
            for d in list(pending):
                try:
                    os.rmdir(d)
                    pending.remove(d)
                except FileNotFoundError:
                    pending.remove(d)
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise _limit_error(exc, "remove cgroup", d) from None
            if not pending:
                break
            if time.monotonic() > deadline:
                raise LimitError(errno.EBUSY, f"nsbox: cgroup {pending[0]} did not empty "
                                 f"within {REMOVE_TIMEOUT:g} s", stage="cgroup", op=pending[0])
            if not killed:
                self.kill()
                killed = True
            else:
                self._kill_each()
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        self.removed = True

    # -- stats --------------------------------------------------------------------------

    def oom_kills(self) -> int | None:
        return None

    def peak_memory(self) -> int | None:
        return None

    def pids_peak(self) -> int | None:
        return None

    def memory_current(self) -> int | None:
        return None


class GroupV2(Group):
    version = 2

    def __init__(self, dirs: list[str], limits: Limits):
        super().__init__(dirs, limits)
        self._dirfd = -1

    def open(self) -> None:
        self._dirfd = os.open(self.dirs[0], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def dirfd(self) -> int:
        return self._dirfd

    def close_fds(self) -> None:
        super().close_fds()
        if self._dirfd >= 0:
            fd, self._dirfd = self._dirfd, -1
            os.close(fd)

    def _file(self, name: str) -> str:
        return os.path.join(self.dirs[0], name)

    def populated(self) -> bool:
        try:
            return _keyed(_read(self._file("cgroup.events"))).get("populated", 0) != 0
        except OSError:
            return False

    def kill(self) -> None:
        try:
            _write(self._file("cgroup.kill"), "1")  # Linux 5.14+
        except FileNotFoundError:
            self._kill_each()
        except OSError:
            self._kill_each()

    def oom_kills(self) -> int | None:
        try:
            return _keyed(_read(self._file("memory.events"))).get("oom_kill", 0)
        except OSError:
            return None

    def peak_memory(self) -> int | None:
        return _read_int(self._file("memory.peak"))  # Linux 5.19+

    def pids_peak(self) -> int | None:
        return _read_int(self._file("pids.peak"))  # Linux 6.13+

    def memory_current(self) -> int | None:
        return _read_int(self._file("memory.current"))


class GroupV1(Group):
    version = 1

    def __init__(self, dirs: list[str], limits: Limits, controllers: dict[str, str]):
        super().__init__(dirs, limits)
        self.by_controller = controllers  # controller -> its directory
        self._fds: list[int] = []

    def open(self) -> None:
        from ._native import above_stdio

        for d in self.dirs:
            # `tasks`, not cgroup.procs: writing "0" there moves the calling
            # thread alone, which the kernel does without taking the global
            # cgroup_threadgroup_rwsem for writing (an RCU grace period, often
            # milliseconds). The setup child is a process of one thread, so
            # moving the thread moves the process. (O_CREAT: as in _write.)
            self._fds.append(above_stdio(os.open(os.path.join(d, "tasks"),
                                                 os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                                                 0o644)))

    def procs_fds(self) -> list[int]:
        return list(self._fds)

    def close_fds(self) -> None:
        super().close_fds()
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def _file(self, controller: str, name: str) -> str | None:
        d = self.by_controller.get(controller)
        return None if d is None else os.path.join(d, name)

    def oom_kills(self) -> int | None:
        path = self._file("memory", "memory.oom_control")
        if path is None:
            return None
        try:
            return _keyed(_read(path)).get("oom_kill", 0)  # Linux 4.13+
        except OSError:
            return None

    def peak_memory(self) -> int | None:
        path = self._file("memory", "memory.max_usage_in_bytes")
        return None if path is None else _read_int(path)

    def pids_peak(self) -> int | None:
        path = self._file("pids", "pids.peak")
        return None if path is None else _read_int(path)

    def memory_current(self) -> int | None:
        path = self._file("memory", "memory.usage_in_bytes")
        return None if path is None else _read_int(path)


# -- creating ----------------------------------------------------------------------


def _v2_limit_files(limits: Limits, d: str) -> list[tuple[str, str]]:
    files = []
    if limits.memory is not None:
        files.append(("memory.max", str(limits.memory)))
        # No swap unless asked for: a memory limit that swaps is not a limit a
        # test can rely on. memory.swap.max is swap alone (docker's --memory-swap
        # is memory plus swap).
        if limits.memory_swap is not None or os.path.exists(os.path.join(d, "memory.swap.max")):
            swap = 0 if limits.memory_swap is None else limits.memory_swap
            files.append(("memory.swap.max",
                          "max" if swap == -1 else str(max(swap - limits.memory, 0))))
    if limits.pids is not None:
        files.append(("pids.max", str(limits.pids)))
    if limits.cpus is not None:
        files.append(("cpu.max", f"{round(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}"))
    return files


def _v1_limit_files(limits: Limits, controller: str, d: str) -> list[tuple[str, str]]:
    files = []
    if controller == "memory" and limits.memory is not None:
        files.append(("memory.limit_in_bytes", str(limits.memory)))
        memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
        if limits.memory_swap is not None:
            if not os.path.exists(memsw):
                raise _unsupported(
                    "memory_swap needs swap accounting, which this kernel has off",
                    hint="boot with swapaccount=1")
            files.append(("memory.memsw.limit_in_bytes", str(limits.memory_swap)))
        elif os.path.exists(memsw):
            files.append(("memory.memsw.limit_in_bytes", str(limits.memory)))
    elif controller == "pids" and limits.pids is not None:
        files.append(("pids.max", str(limits.pids)))
    elif controller == "cpu" and limits.cpus is not None:
        files.append(("cpu.cfs_period_us", str(CPU_PERIOD_US)))
        files.append(("cpu.cfs_quota_us", str(round(limits.cpus * CPU_PERIOD_US))))
    return files


def _makedirs(path: str, stop: str) -> list[str]:
    """mkdir -p of `path` below the existing `stop`; the directories made."""
    made = []
    rel = os.path.relpath(path, stop)
    cur = stop
    for part in rel.split("/"):
        if part in ("", "."):
            continue
        cur = os.path.join(cur, part)
        try:
            os.mkdir(cur)
            made.append(cur)
        except FileExistsError:
            pass
    return made


def _choose(limits: Limits, h: Host) -> tuple[int, str]:
    """(version, parent cgroup path) for these limits on this host: v2 when it
    has every controller needed, else v1 when it has them."""
    needed = limits.controllers
    missing_v2 = missing_v1 = None
    if h.v2 is not None:
        parent = limits.cgroup_parent
        if parent is None and h.euid == 0:
            parent = _default_parent(h.v2)
        elif parent is None:
            base = h.delegated_v2()
            if base is not None:
                parent = base.rstrip("/") + DEFAULT_PARENT
        if parent is not None:
            missing_v2 = needed - _V2Layout(h, parent, limits.cgroup_parent is not None).available
            if not missing_v2:
                return 2, parent
        else:
            missing_v2 = {"a subtree delegated to this user"}
    if h.v1 and (needed or h.v2 is None):
        present = {c for c in needed if c in h.v1}
        if present == needed:
            return 1, limits.cgroup_parent or ""  # "": _default_parent of each hierarchy
        missing_v1 = needed - present
    what = ", ".join(sorted(needed)) or "a cgroup"
    if h.v2 is None and not h.v1:
        raise _unsupported(f"cgroup limits ({what}) need cgroups, and none is mounted")
    detail = []
    if missing_v2 is not None:
        detail.append("cgroup v2 lacks " + ", ".join(sorted(missing_v2)))
    if missing_v1:
        detail.append("cgroup v1 lacks " + ", ".join(sorted(missing_v1)))
    raise _unsupported(f"cgroup limits ({what}) are not available here: " + "; ".join(detail),
                       hint="the rlimits (cpu_time, nofile, fsize, core) need no cgroup")


class _V2Layout:
    """Where a v2 sandbox cgroup goes: the parent directory, the deepest
    directory of it that exists, whether nsbox may enable controllers there,
    and which controllers a sandbox cgroup could then have."""

    def __init__(self, h: Host, parent: str, explicit: bool):
        assert h.v2 is not None
        self.parent_dir = h.v2.path(parent)
        if self.parent_dir is None:
            raise _unsupported(f"cgroup_parent {parent} is outside this process's cgroup "
                               "namespace")
        existing = _existing_ancestor(self.parent_dir, h.v2.mountpoint)
        self.existing = existing
        # nsbox enables controllers only in cgroups that are its own, in the
        # parent the caller named, and in a subtree delegated to the caller.
        self.modifiable = (_is_ours(existing) or (explicit and existing == self.parent_dir)
                           or (h.euid != 0 and h._owned(existing)))
        name = "cgroup.controllers" if self.modifiable else "cgroup.subtree_control"
        try:
            self.available = frozenset(_read(os.path.join(existing, name)).split())
        except OSError:
            self.available = frozenset()


def create(limits: Limits, h: Host | None = None) -> Group:
    """Make a sandbox's cgroup with `limits` applied; the caller removes it."""
    h = h or host()
    version, parent = _choose(limits, h)
    name = _new_name()
    if version == 2:
        return _create_v2(limits, h, parent, name)
    return _create_v1(limits, h, parent, name)


def _check_writable(path: str, h: Host) -> None:
    if not os.access(path, os.W_OK):
        raise UnsupportedError(
            errno.EACCES,
            f"nsbox: cannot create cgroups under {path}: permission denied",
            hint=("cgroup v1 cannot be delegated to unprivileged users: cgroup limits need "
                  "root here; the rlimits (cpu_time, nofile, fsize, core) work without it"
                  if h.v2 is None or h.v1 else
                  "cgroup limits need root, or a delegated cgroup v2 subtree (cgroup_parent)"),
        )


def _create_v2(limits: Limits, h: Host, parent: str, name: str) -> Group:
    def attempt() -> str | None:
        layout = _V2Layout(h, parent, limits.cgroup_parent is not None)
        _check_writable(layout.existing, h)
        try:
            made = _makedirs(layout.parent_dir, layout.existing)
            # A controller reaches the sandbox's cgroup only if it is enabled
            # in every cgroup.subtree_control on the way down.
            for d in ([layout.existing] if layout.modifiable else []) + made:
                _enable(d, sorted(limits.controllers))
        except FileNotFoundError:
            return None  # a parent went away meanwhile (see Group.remove)
        except OSError as exc:
            raise _limit_error(exc, "prepare cgroup parent", layout.parent_dir) from None
        return _mkdir_cgroup(layout.parent_dir, name)

    d = _retry_parent_races(attempt, parent)
    group = GroupV2([d], limits)
    try:
        for fname, value in _v2_limit_files(limits, d):
            _write_limit(os.path.join(d, fname), value)
        group.open()
        # If the caller dies, init steps back into the caller's own cgroup
        # (where a fork would have put it) to remove the sandbox's.
        own = h.v2.path(h.own[""]) if "" in h.own else None
        group.open_cleanup([os.path.join(own, "cgroup.procs") if own else None])
    except BaseException:
        _discard(group)
        raise
    return group


def _existing_ancestor(path: str, mountpoint: str) -> str:
    """The deepest directory of `path` that exists (at worst the mountpoint)."""
    while not os.path.isdir(path) and len(path) > len(mountpoint):
        path = os.path.dirname(path)
    return path


_used_parents: set[str] = set()
_atexit_registered = False


def release_parents() -> list[str]:
    """Remove nsbox's default parents that this process used and that are
    empty now (rmdir fails while any sandbox cgroup, of any process, is in
    one). Runs at exit: between spawns the parent stays, because making and
    removing a memory cgroup each time would cost about 0.2 ms per spawn. A
    parent the caller named (cgroup_parent) is theirs and stays. Returns the
    directories removed."""
    removed = []
    for parent in sorted(_used_parents, reverse=True):
        try:
            os.rmdir(parent)
            removed.append(parent)
        except FileNotFoundError:
            pass
        except OSError:
            continue  # still in use
        _used_parents.discard(parent)
    return removed


def _mkdir_cgroup(parent_dir: str, name: str) -> str | None:
    """Make the sandbox's cgroup directory (collecting stale ones first);
    None if the parent went away meanwhile."""
    global _atexit_registered
    if os.path.basename(parent_dir) == DEFAULT_PARENT.strip("/") and \
            parent_dir not in _used_parents:
        if not _atexit_registered:
            import atexit

            atexit.register(release_parents)
            _atexit_registered = True
        _used_parents.add(parent_dir)
    _collect_once(parent_dir)
    d = os.path.join(parent_dir, name)
    try:
        os.mkdir(d)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _limit_error(exc, "create cgroup", d) from None
    return d


# nsbox's own parent goes when the last process using it exits (release_parents),
# so another nsbox process may remove it between our mkdir -p and our mkdir.
PARENT_RACE_RETRIES = 8


def _retry_parent_races(attempt, parent: str) -> str:
    for _ in range(PARENT_RACE_RETRIES):
        d = attempt()
        if d is not None:
            return d
    raise LimitError(errno.ENOENT, f"nsbox: cgroup parent {parent} kept disappearing",
                     stage="cgroup", op=parent)


def _discard(group: Group) -> None:
    """Remove a half-made group without hiding the error that stopped it."""
    try:
        group.remove()
    except OSError:
        pass


def _default_parent(hier: Hierarchy) -> str:
    """/nsbox in the part of the hierarchy this mount shows: its root, which
    is not / inside a container that sees only its own subtree."""
    return hier.root.rstrip("/") + DEFAULT_PARENT


def _is_ours(d: str) -> bool:
    base = os.path.basename(d.rstrip("/"))
    return base.startswith(PREFIX) or base == DEFAULT_PARENT.strip("/")


def _enable(d: str, controllers: list[str]) -> None:
    if not controllers:
        return
    control = os.path.join(d, "cgroup.subtree_control")
    try:
        have = set(_read(control).split())
    except FileNotFoundError:
        have = set()
    todo = [c for c in controllers if c not in have]
    if todo:
        _write(control, " ".join("+" + c for c in todo))


def _create_v1(limits: Limits, h: Host, parent: str, name: str) -> Group:
    controllers = sorted(limits.controllers) or [next(
        (c for c in ("pids", "memory", "cpu") if c in h.v1), sorted(h.v1)[0])]
    hierarchies: dict[str, Hierarchy] = {}
    for c in controllers:
        hierarchies.setdefault(h.v1[c].mountpoint, h.v1[c])
    dirs: list[str] = []
    by_controller: dict[str, str] = {}
    group = GroupV1(dirs, limits, by_controller)
    try:
        for hier in hierarchies.values():
            parent_dir = hier.path(parent or _default_parent(hier))
            if parent_dir is None:
                raise _unsupported(f"cgroup_parent {parent} is outside this process's cgroup "
                                   "namespace")

            def attempt(parent_dir=parent_dir, hier=hier) -> str | None:
                existing = _existing_ancestor(parent_dir, hier.mountpoint)
                _check_writable(existing, h)
                try:
                    _makedirs(parent_dir, existing)
                except FileNotFoundError:
                    return None  # a parent went away meanwhile (see Group.remove)
                except OSError as exc:
                    raise _limit_error(exc, "prepare cgroup parent", parent_dir) from None
                return _mkdir_cgroup(parent_dir, name)

            d = _retry_parent_races(attempt, parent_dir)
            dirs.append(d)
            for c in hier.controllers:
                by_controller[c] = d
            for c in sorted(hier.controllers & set(controllers)):
                for fname, value in _v1_limit_files(limits, c, d):
                    _write_limit(os.path.join(d, fname), value)
        group.open()
        # If the caller dies, init steps into nsbox's parent to remove the
        # sandbox's cgroup (v1 allows processes in any cgroup).
        group.open_cleanup([os.path.join(os.path.dirname(d), "tasks") for d in dirs])
    except BaseException:
        _discard(group)
        raise
    return group
