"""The only importer of the cffi module: pack a Plan into C structs and spawn.

Everything the child needs is prepared here, in the parent: the child runs
no Python and allocates nothing.
"""

from __future__ import annotations

import os
import threading

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

_lock = threading.Lock()
_cache: dict[str, int] = {}
_cache_pid = -1


def _forget_after_fork() -> None:
    # fds were inherited, but the caller's pidfd would name our parent: drop both.
    global _cache_pid
    _cache.clear()
    _cache_pid = -1


os.register_at_fork(after_in_child=_forget_after_fork)


def _process_fds() -> tuple[int, int]:
    """(O_PATH fd of nsbox-init, pidfd of this process), opened once per process."""
    global _cache_pid
    pid = os.getpid()
    if _cache_pid == pid:
        return _cache["init"], _cache["self"]
    with _lock:
        if _cache_pid != pid:
            try:
                init_fd = os.open(INIT_PATH, os.O_PATH | os.O_CLOEXEC)
            except OSError as exc:
                raise _errors.SpawnError(
                    exc.errno or 0, f"nsbox: cannot open {INIT_PATH}: {exc.strerror}"
                ) from None
            try:
                self_fd = os.pidfd_open(pid)
            except OSError:
                self_fd = -1  # kernels before 5.3: the death signal alone covers setup
            _cache["init"], _cache["self"] = init_fd, self_fd
            _cache_pid = pid
    return _cache["init"], _cache["self"]


def _cstrings(items, keep: list):
    arr = ffi.new("char *[]", len(items) + 1)
    for i, item in enumerate(items):
        s = ffi.new("char[]", item if isinstance(item, bytes) else os.fsencode(item))
        keep.append(s)
        arr[i] = s
    keep.append(arr)
    return arr


def _cstr(value, keep: list):
    if value is None:
        return ffi.NULL
    s = ffi.new("char[]", value if isinstance(value, bytes) else os.fsencode(value))
    keep.append(s)
    return s


def spawn(
    plan: Plan,
    *,
    report_fd: int,
    stdio: tuple[int, int, int],
    debug_fail: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """Start the sandbox described by `plan`; returns (pid, pidfd) of its init.

    Raises UnsupportedError/SpawnError when the clone itself fails. Failures
    after the clone arrive as records on the report pipe.
    """
    init_fd, self_pidfd = _process_fds()
    keep: list = []
    fail_stage, fail_errno = debug_fail or (-1, 0)
    init_flags = INIT_PID1 if "pid" in plan.namespaces else 0
    init_argv = [
        b"nsbox-init",
        b"%d" % report_fd,
        b"%d" % self_pidfd,
        b"%d" % init_flags,
        b"%d" % fail_stage,
        b"%d" % fail_errno,
        b"--",
        *plan.argv,
    ]
    spec = ffi.new("struct nsbox_spec *")
    keep.append(spec)
    spec.abi_version = lib.NSBOX_ABI_VERSION
    spec.namespaces = plan.ns_bits
    spec.init_argv = _cstrings(init_argv, keep)
    spec.envp = _cstrings([os.fsencode(k) + b"=" + os.fsencode(v) for k, v in plan.env], keep)
    spec.init_fd = init_fd
    spec.report_fd = report_fd
    spec.parent_pidfd = self_pidfd
    spec.stdio = list(stdio)
    keep_fds = [*plan.pass_fds, report_fd] + ([self_pidfd] if self_pidfd >= 0 else [])
    keep_arr = ffi.new("int32_t[]", keep_fds)
    keep.append(keep_arr)
    spec.keep_fds = keep_arr
    spec.n_keep_fds = len(keep_fds)
    spec.root = _cstr(plan.root, keep)
    spec.root_flags = 1 if plan.root_readonly else 0
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
        spec.mounts = mounts
        spec.n_mounts = len(plan.mounts)
    spec.uid_map = _cstr(plan.uid_map, keep)
    spec.gid_map = _cstr(plan.gid_map, keep)
    spec.setid_uid = plan.setid_uid
    spec.setid_gid = plan.setid_gid
    spec.hostname = _cstr(plan.hostname, keep)
    spec.cwd = _cstr(plan.cwd, keep)
    spec.cwd_flags = 1 if plan.cwd_required else 0
    spec.debug_fail_stage = fail_stage
    spec.debug_fail_errno = fail_errno

    out = ffi.new("struct nsbox_child *")
    if lib.nsbox_spawn(spec, out) < 0:
        raise _errors.clone_error(out.err, plan.namespaces)
    return out.pid, out.pidfd
