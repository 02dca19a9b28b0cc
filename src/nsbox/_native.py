"""The only importer of the cffi module: pack a Plan into C structs and spawn.

Everything the child needs is prepared here, in the parent: the child runs
no Python and allocates nothing.
"""

from __future__ import annotations

import _thread
import os
import sys

from . import _errors
from ._plan import Plan

try:
    from . import _nsbox_cffi
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "nsbox's native module is not built: install with `pip install .` "
        "(or `pip install -e .` for development), which needs a C compiler"
    ) from exc

ffi = _nsbox_cffi.ffi
lib = _nsbox_cffi.lib

INIT_PATH = os.path.join(os.path.dirname(_nsbox_cffi.__file__), "nsbox-init")
INIT_PID1 = 1
INIT_TIMES = 2
INIT_PARKED = 4

_lock = _thread.allocate_lock()
_cache: dict[str, int] = {}
_cache_pid = -1


def _forget_after_fork() -> None:
    # fds were inherited, but the caller's pidfd would name our parent: drop both.
    global _cache_pid
    _cache.clear()
    _cache_pid = -1


os.register_at_fork(after_in_child=_forget_after_fork)


def above_stdio(fd: int) -> int:
    """`fd`, or a close-on-exec copy at 3 or above when it is 0-2 (the low one
    closed). A caller running with stdin/stdout/stderr closed gets its new fds
    there, and an fd handed to a sandbox by number must never be where the
    setup child puts the command's stdio."""
    if not 0 <= fd <= 2:
        return fd
    import fcntl

    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def _process_fds() -> tuple[int, int]:
    """(O_PATH fd of nsbox-init, pidfd of this process), opened once per process."""
    global _cache_pid
    pid = os.getpid()
    if _cache_pid == pid:
        return _cache["init"], _cache["self"]
    with _lock:
        if _cache_pid != pid:
            try:
                init_fd = above_stdio(os.open(INIT_PATH, os.O_PATH | os.O_CLOEXEC))
            except OSError as exc:
                raise _errors.SpawnError(
                    exc.errno or 0, f"nsbox: cannot open {INIT_PATH}: {exc.strerror}"
                ) from None
            try:
                self_fd = above_stdio(os.pidfd_open(pid))
            except OSError:
                self_fd = -1  # kernels before 5.3: the death signal alone covers setup
            _cache["init"], _cache["self"] = init_fd, self_fd
            _cache_pid = pid
    return _cache["init"], _cache["self"]


def _cstrings(items, keep: list):
    """A NULL-terminated char *[] over one buffer holding every string."""
    blob = b"".join(item + b"\0" for item in items)
    buf = ffi.new("char[]", blob) if blob else ffi.NULL
    arr = ffi.new("char *[]", len(items) + 1)
    off = 0
    for i, item in enumerate(items):
        arr[i] = buf + off
        off += len(item) + 1
    keep.append(buf)
    keep.append(arr)
    return arr


def _cstr(value, keep: list):
    if value is None:
        return ffi.NULL
    s = ffi.new("char[]", value if isinstance(value, bytes) else os.fsencode(value))
    keep.append(s)
    return s


class _Packed:
    """The parts of a plan's C structs that do not change between spawns.

    Immutable once built, so one instance serves many spawns, also from
    several threads at once.
    """

    __slots__ = ("keep", "argv", "envp", "mounts", "n_mounts", "root", "uid_map", "gid_map",
                 "hostname", "cwd", "rlimits")

    def __init__(self, plan: Plan):
        keep: list = []
        self.keep = keep
        self.argv = [os.fsencode(a) for a in plan.argv]
        self.envp = _cstrings([os.fsencode(k) + b"=" + os.fsencode(v) for k, v in plan.env], keep)
        self.n_mounts = len(plan.mounts)
        self.mounts = ffi.NULL
        if plan.mounts:
            mounts = ffi.new("struct nsbox_mount[]", len(plan.mounts))
            keep.append(mounts)
            for i, m in enumerate(plan.mounts):
                c = mounts[i]
                c.kind = m.kind
                c.flags = m.flags
                c.src = _cstr(m.src, keep)
                c.dst = _cstr(m.dst.lstrip("/"), keep)
                c.size = _cstr(None if m.size is None else str(m.size), keep)
                c.mode = _cstr(None if m.mode is None else f"{m.mode:o}", keep)
            self.mounts = mounts
        self.root = _cstr(plan.root, keep)
        self.uid_map = _cstr(plan.uid_map, keep)
        self.gid_map = _cstr(plan.gid_map, keep)
        self.hostname = _cstr(plan.hostname, keep)
        self.cwd = _cstr(plan.cwd, keep)
        # nsbox-init applies these to the command (see init.c).
        self.rlimits = ",".join(f"{r}:{soft}:{hard}" for r, soft, hard in plan.rlimits
                                ).encode() or b"-"


_packed: dict[Plan, _Packed] = {}
_PACKED_MAX = 64


def _pack(plan: Plan) -> _Packed:
    packed = _packed.get(plan)
    if packed is None:
        packed = _Packed(plan)
        if len(_packed) >= _PACKED_MAX:
            try:
                _packed.pop(next(iter(_packed)))
            except (StopIteration, KeyError, RuntimeError):
                pass
        _packed[plan] = packed
    return packed


def spawn(
    plan: Plan,
    *,
    report_fd: int,
    stdio: tuple[int, int, int],
    debug_fail: tuple[int, int] | None = None,
    cgroup: object = None,
    timings: list | None = None,
    park_fd: int = -1,
    lease: object = None,
    status: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """Start the sandbox described by `plan`; returns (pid, pidfd) of its init.

    `cgroup` is the sandbox's _cgroup.Group, if it has one. With a list as
    `timings`, the phase timestamps of the spawn (ns, CLOCK_MONOTONIC, 0 for
    a phase that did not run) are appended to it. With `park_fd`, the
    sandbox is a warm-pool slot: nsbox-init waits for its command on that
    socket (see Sandbox._unpark). With a `lease` (a _network.Lease), the
    sandbox's eth0 joins that network (see csrc/net.c). With `status` (fd,
    offset), nsbox-init also writes its final EXITED record there (see
    Sandbox._release_report). Raises
    UnsupportedError/SpawnError when the clone itself fails. Failures after
    the clone arrive as records on the report pipe.
    """
    init_fd, self_pidfd = _process_fds()
    packed = _pack(plan)
    keep: list = [packed]
    fail_stage, fail_errno = debug_fail or (-1, 0)
    init_flags = (INIT_PID1 if "pid" in plan.namespaces else 0) | \
        (INIT_TIMES if timings is not None else 0) | (INIT_PARKED if park_fd >= 0 else 0)
    cgroup_arg, cgroup_fds = cgroup.init_arg() if cgroup is not None else (b"-", [])
    init_argv = [
        b"nsbox-init",
        b"%d" % report_fd,
        b"%d" % self_pidfd,
        b"%d" % init_flags,
        b"%d" % fail_stage,
        b"%d" % fail_errno,
        packed.rlimits,
        cgroup_arg,
        b"%d:%d" % status if status is not None else b"-",
        b"--",
        # (A parked slot: the socket's fd, then its placeholder args, which
        # name it in ps.)
        *(packed.argv if park_fd < 0 else [b"%d" % park_fd, *packed.argv]),
    ]
    spec = ffi.new("struct nsbox_spec *")
    keep.append(spec)
    spec.abi_version = lib.NSBOX_ABI_VERSION
    spec.namespaces = plan.ns_bits
    spec.init_argv = _cstrings(init_argv, keep)
    spec.envp = packed.envp
    spec.init_fd = init_fd
    spec.report_fd = report_fd
    spec.parent_pidfd = self_pidfd
    spec.stdio = list(stdio)
    keep_fds = [*plan.pass_fds, report_fd, *([self_pidfd] if self_pidfd >= 0 else []),
                *cgroup_fds, *([park_fd] if park_fd >= 0 else []),
                *([status[0]] if status is not None else [])]
    keep_arr = ffi.new("int32_t[]", keep_fds)
    keep.append(keep_arr)
    spec.keep_fds = keep_arr
    spec.n_keep_fds = len(keep_fds)
    spec.root = packed.root
    spec.root_flags = 1 if plan.root_readonly else 0
    spec.mounts = packed.mounts
    spec.n_mounts = packed.n_mounts
    spec.uid_map = packed.uid_map
    spec.gid_map = packed.gid_map
    spec.setid_uid = plan.setid_uid
    spec.setid_gid = plan.setid_gid
    spec.hostname = packed.hostname
    spec.cwd = packed.cwd
    spec.cwd_flags = 1 if plan.cwd_required else 0
    spec.keep_caps = plan.keep_caps
    procs = cgroup.procs_fds() if cgroup is not None else []
    if procs:
        procs_arr = ffi.new("int32_t[]", procs)
        keep.append(procs_arr)
        spec.cgroup_procs = procs_arr
    spec.n_cgroup_procs = len(procs)
    spec.cgroup_dirfd = cgroup.dirfd() if cgroup is not None else -1
    if timings is not None:
        stamps = ffi.new("uint64_t[]", lib.NSBOX_PHASE_COUNT)
        keep.append(stamps)
        spec.timings = stamps
    spec.debug_fail_stage = fail_stage
    spec.debug_fail_errno = fail_errno
    if lease is None:
        spec.net_hub_fd = -1
        spec.net_userns_fd = -1
    else:
        spec.net_hub_fd = lease.hub_fd
        spec.net_userns_fd = lease.userns_fd
        spec.net_bridge = lease.bridge
        spec.net_host_if = _cstr(lease.host_if, keep)
        spec.net_addr = int.from_bytes(lease.address.packed, sys.byteorder)
        spec.net_gateway = int.from_bytes(lease.gateway.packed, sys.byteorder)
        spec.net_prefix = lease.prefix

    out = ffi.new("struct nsbox_child *")
    rc = lib.nsbox_spawn(spec, out)
    if timings is not None:
        timings.extend(stamps)
    if rc < 0:
        if out.stage == lib.NSBOX_STAGE_NETWORK:
            raise _errors.setup_error(out.stage, out.err, op=lease)
        raise _errors.clone_error(out.err, plan.namespaces)
    return out.pid, out.pidfd
