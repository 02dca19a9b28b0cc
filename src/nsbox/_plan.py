"""Spec -> the ordered setup the child performs (pure).

This is the one place where ordering lives: which mounts exist, in which
order, and which targets may be created directly (inside a tmpfs of ours)
rather than through a mirror of their parent directory. The caller's identity,
working directory and environment are inputs, so the function stays pure.
"""

from __future__ import annotations

from ._frozen import Frozen
from ._spec import Bind, Limits, Spec, Tmpfs

__all__ = ["Plan", "PlanMount", "make_plan", "NS_BITS", "MNT_BIND", "MNT_TMPFS", "MNT_PROC",
           "MNT_DEV", "MF_READONLY", "MF_IN_SCRATCH"]

# Values as in csrc/nsbox.h (a native test checks them against the module).
NS_BITS = {"user": 1, "mount": 2, "pid": 4, "uts": 8, "ipc": 16, "net": 32, "cgroup": 64}
MNT_BIND, MNT_TMPFS, MNT_PROC, MNT_DEV = 1, 2, 3, 4
MF_READONLY, MF_IN_SCRATCH = 1, 2

# The capability bounding set the command keeps: docker's default set. Without
# CAP_SYS_ADMIN, root inside cannot remount the read-only root read-write or
# unmount what nsbox mounted.
CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
    "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_CHROOT": 18,
    "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31,
}
DEFAULT_CAPS = sum(1 << bit for bit in CAPABILITIES.values())


class PlanMount(Frozen):
    """One mount op; `origin` is the spec's Bind/Tmpfs or the description of a default."""

    __slots__ = ("kind", "dst", "src", "flags", "size", "mode", "origin")
    kind: int
    dst: str  # absolute, inside the sandbox
    src: str | None
    flags: int
    size: int | None
    mode: int | None
    origin: object

    def __init__(self, kind: int, dst: str, src: str | None = None, flags: int = 0,
                 size: int | None = None, mode: int | None = None, origin: object = None):
        for name, value in zip(self.__slots__, (kind, dst, src, flags, size, mode, origin),
                               strict=True):
            self._set(name, value)

    def with_flags(self, flags: int) -> PlanMount:
        return PlanMount(self.kind, self.dst, self.src, flags, self.size, self.mode, self.origin)

    def describe(self) -> str:
        if isinstance(self.origin, (Bind, Tmpfs)):
            return self.origin.describe()
        return str(self.origin)


class Plan(Frozen):
    """Everything the C side needs, in the order it needs it."""

    __slots__ = ("argv", "env", "namespaces", "ns_bits", "root", "root_readonly", "mounts",
                 "uid_map", "gid_map", "setid_uid", "setid_gid", "hostname", "cwd",
                 "cwd_required", "pass_fds", "keep_caps", "rlimits", "limits")
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    namespaces: frozenset[str]
    ns_bits: int
    root: str | None  # None: no filesystem setup
    root_readonly: bool
    mounts: tuple[PlanMount, ...]
    uid_map: str | None
    gid_map: str | None
    setid_uid: int
    setid_gid: int
    hostname: str | None
    cwd: str | None
    cwd_required: bool
    pass_fds: tuple[int, ...]
    keep_caps: int
    rlimits: tuple[tuple[int, int, int], ...]  # (RLIMIT_*, soft, hard); -1 unlimited
    limits: Limits | None

    def __init__(self, **fields: object):
        fields.setdefault("keep_caps", DEFAULT_CAPS)
        fields.setdefault("rlimits", ())
        fields.setdefault("limits", None)
        if set(fields) != set(self.__slots__):
            raise TypeError(f"Plan fields: {sorted(set(fields) ^ set(self.__slots__))}")
        for name, value in fields.items():
            self._set(name, value)


def _is_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")


def _mounts(spec: Spec, network_dir: str | None = None) -> tuple[PlanMount, ...]:
    user: list[PlanMount] = []
    for m in spec.mounts:
        if isinstance(m, Bind):
            user.append(PlanMount(MNT_BIND, m.dst, src=m.src,
                                  flags=MF_READONLY if m.readonly else 0, origin=m))
        else:
            user.append(PlanMount(MNT_TMPFS, m.dst, size=m.size, mode=m.mode, origin=m))
    taken = {m.dst for m in user}
    defaults = [PlanMount(MNT_DEV, "/dev", origin="minimal /dev")]
    if "pid" in spec.namespaces:
        defaults.append(PlanMount(MNT_PROC, "/proc", origin="proc /proc"))
    defaults.append(PlanMount(MNT_TMPFS, "/tmp", mode=0o1777, origin="tmpfs /tmp"))
    if network_dir is not None:
        # The network's resolver (its hub answers for the sandboxes' names) and
        # a hosts file with localhost only: the host's own would name the host.
        for name in ("resolv.conf", "hosts"):
            defaults.append(PlanMount(MNT_BIND, "/etc/" + name, src=f"{network_dir}/{name}",
                                      flags=MF_READONLY, origin=f"network's /etc/{name}"))
    # A user mount at a default's target replaces the default.
    ordered = [d for d in defaults if d.dst not in taken]
    # Parents before children, as docker does; stable for equal depths.
    ordered += sorted(user, key=lambda m: _depth(m.dst))
    out: list[PlanMount] = []
    for m in ordered:
        # Which mount will hold the target? The latest earlier one above it.
        holder = None
        for prev in out:
            if _is_under(m.dst, prev.dst):
                holder = prev
        in_scratch = holder is not None and holder.kind in (MNT_TMPFS, MNT_DEV)
        if in_scratch:
            m = m.with_flags(m.flags | MF_IN_SCRATCH)
        out.append(m)
    return tuple(out)


def rlimits_for(limits: Limits | None) -> tuple[tuple[int, int, int], ...]:
    """The command's rlimits as (resource, soft, hard), in Limits' field order.

    cpu_time gets a hard limit one second above the soft one: SIGXCPU first (a
    command may catch it and finish up), SIGKILL a second later.
    """
    if limits is None:
        return ()
    import resource

    out = []
    if limits.cpu_time is not None:
        out.append((resource.RLIMIT_CPU, limits.cpu_time, limits.cpu_time + 1))
    for name, res in (("nofile", resource.RLIMIT_NOFILE), ("fsize", resource.RLIMIT_FSIZE),
                      ("core", resource.RLIMIT_CORE)):
        value = getattr(limits, name)
        if value is not None:
            out.append((res, value, value))
    return tuple(out)


RLIMIT_FIELDS = ("cpu_time", "nofile", "fsize", "core")


def make_plan(
    spec: Spec,
    *,
    caller_uid: int,
    caller_gid: int,
    caller_cwd: str | None,
    environ: dict[str, str],
    network_dir: str | None = None,
) -> Plan:
    ns = spec.namespaces
    userns = "user" in ns
    inner_uid = 0 if spec.uid is None else spec.uid
    inner_gid = 0 if spec.gid is None else spec.gid
    if userns:
        uid_map, gid_map = f"{inner_uid} {caller_uid} 1\n", f"{inner_gid} {caller_gid} 1\n"
        setid_uid = setid_gid = -1
    else:
        uid_map = gid_map = None
        setid_uid = -1 if spec.uid is None else spec.uid
        setid_gid = -1 if spec.gid is None else spec.gid
    filesystem = "mount" in ns
    if spec.cwd is not None:
        cwd, required = spec.cwd, True
    elif filesystem:
        cwd, required = caller_cwd, False
    else:
        cwd, required = None, False
    env = spec.env if spec.env is not None else tuple(environ.items())
    return Plan(
        argv=spec.args,
        env=env,
        namespaces=ns,
        ns_bits=sum(NS_BITS[n] for n in ns),
        root=(spec.rootfs or "/") if filesystem else None,
        root_readonly=True,
        mounts=_mounts(spec, network_dir) if filesystem else (),
        uid_map=uid_map,
        gid_map=gid_map,
        setid_uid=setid_uid,
        setid_gid=setid_gid,
        hostname=spec.hostname if spec.hostname is not None or "uts" not in ns else spec.name,
        cwd=cwd,
        cwd_required=required,
        pass_fds=spec.pass_fds,
        rlimits=rlimits_for(spec.limits),
        limits=spec.limits,
    )

