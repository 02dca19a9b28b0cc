"""Frozen, validated descriptions of a sandbox: Spec, Bind, Tmpfs (pure).

Everything here is a pure function of its input: no syscalls, no filesystem
access. Any input either builds a value or raises SpecError naming the value
at fault.
"""

from __future__ import annotations

import os
import posixpath
from typing import TYPE_CHECKING

from ._errors import SpecError
from ._frozen import Frozen, FrozenInstanceError

if TYPE_CHECKING:  # imported where used: ~1.5 ms of every CLI start otherwise
    import ipaddress

__all__ = ["Spec", "Bind", "Tmpfs", "Limits", "Network", "Publish", "NAMESPACES", "NETWORK_MODES",
           "parse_size",
           "format_size", "make_spec", "FrozenInstanceError"]

NAMESPACES = ("user", "mount", "pid", "uts", "ipc", "net", "cgroup")
NETWORK_MODES = ("none", "host")
PATH_MAX = 4096
HOST_NAME_MAX = 64
MAX_ID = 2**32 - 2  # (uid_t)-1 is "no id"
MAX_FD = 2**31 - 1

_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _fs(value: object, what: str) -> str:
    """A str or bytes or PathLike as str (bytes via the filesystem encoding)."""
    if isinstance(value, bool) or value is None:
        raise SpecError(f"{what} must be a path or string, not {value!r}")
    try:
        value = os.fspath(value)
    except TypeError:
        raise SpecError(f"{what} must be a path or string, not {type(value).__name__}") from None
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if "\0" in value:
        raise SpecError(f"{what} contains a NUL byte: {value!r}")
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        raise SpecError(f"{what} cannot be encoded for the kernel: {value!r}") from None
    return value


def _encoded_len(value: str) -> int:
    return len(os.fsencode(value))


def check_path(value: object, what: str, *, allow_root: bool = True) -> str:
    """An absolute path without NUL or '..', normalized ('//' and trailing '/' removed)."""
    path = _fs(value, what)
    if not path.startswith("/"):
        raise SpecError(f"{what} must be an absolute path: {path!r}")
    if ".." in path.split("/"):
        raise SpecError(f"{what} must not contain '..': {path!r}")
    if _encoded_len(path) >= PATH_MAX:
        raise SpecError(f"{what} is longer than {PATH_MAX - 1} bytes")
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if not allow_root and norm == "/":
        raise SpecError(f"{what} must not be '/' (use rootfs= to replace the root)")
    return norm


def _host_label(label: str) -> bool:
    # (No `re`: it is not otherwise imported on the CLI's path.)
    return (0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
            and all(c in _LABEL_CHARS for c in label))


def _parse_size_text(text: str) -> int | None:
    """'64M', '1g', '512KiB', '100' -> bytes; None if it is not a size."""
    text = text.strip()
    digits = 0
    while digits < len(text) and "0" <= text[digits] <= "9":
        digits += 1
    if not 0 < digits <= 20:
        return None
    rest = text[digits:].lstrip()
    unit = rest[:1].lower() if rest[:1].lower() in ("k", "m", "g", "t") else ""
    suffix = rest[len(unit):]
    if suffix not in ("", "b", "B", "ib", "iB") or (suffix[:1] == "i" and not unit):
        return None
    return int(text[:digits]) * _UNITS[unit]


def check_hostname(value: object) -> str:
    if not isinstance(value, str):
        raise SpecError(f"hostname must be a string, not {type(value).__name__}")
    if not value:
        raise SpecError("hostname must not be empty")
    if not value.isascii():
        raise SpecError(f"hostname {value!r} is not a valid host name (ASCII only)")
    if len(value) > HOST_NAME_MAX:
        raise SpecError(f"hostname is longer than {HOST_NAME_MAX} bytes: {value!r}")
    if not all(_host_label(label) for label in value.split(".")):
        raise SpecError(
            f"hostname {value!r} is not a valid host name "
            "(dot-separated labels of letters, digits and '-', not starting or ending with '-')"
        )
    return value


NAME_MAX = 32  # a network's or a sandbox's name: one DNS label, kept short
DEFAULT_NETWORK = "bridge"
NETWORK_DOMAIN = "nsbox"  # a sandbox `db` on network `ci` is also `db.ci.nsbox`
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def check_name(value: object, what: str) -> str:
    """One DNS label in lower case: a-z, 0-9 and '-', not at either end."""
    if not isinstance(value, str):
        raise SpecError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise SpecError(f"{what} must not be empty")
    if len(value) > NAME_MAX:
        raise SpecError(f"{what} is longer than {NAME_MAX} characters: {value[:40]!r}...")
    if not set(value) <= _NAME_CHARS or value[0] == "-" or value[-1] == "-":
        raise SpecError(
            f"{what} {value!r} is not a valid name (lower-case letters, digits and '-', "
            "not starting or ending with '-')"
        )
    if value in NETWORK_MODES:
        raise SpecError(f"{what} {value!r} is reserved")
    return value


NETWORK_HOOKS: dict = {}


class Network(Frozen):
    """A network sandboxes join (`network=nsbox.Network("ci")`, or just "ci").

    Sandboxes on one network reach each other by address and by name (`db`,
    or `db.ci.nsbox`); other networks and the host's own services are out of
    reach unless published. The network exists while some sandbox (or an open
    `with network:` block) uses it, and is shared by every process of the same
    user. `subnet` (IPv4, /8 to /24) defaults to the first of 10.88.0.0/16,
    10.89.0.0/16, ... that no host route overlaps; an explicit subnet that
    overlaps a host route is refused. `host_route=True` (root only; never the
    default) also routes the subnet from the caller's network namespace to the
    network: an interface `nsbx-h...` there with the subnet's last address.
    """

    __slots__ = ("name", "subnet", "host_route")
    name: str
    subnet: ipaddress.IPv4Network | None
    host_route: bool

    def __init__(self, name: object = DEFAULT_NETWORK, subnet: object = None,
                 host_route: object = False):
        self._set("name", check_name(name, "network name"))
        if subnet is not None:
            import ipaddress

            try:
                net = ipaddress.IPv4Network(subnet)
            except (ValueError, TypeError) as exc:
                raise SpecError(f"subnet {subnet!r} is not an IPv4 network: {exc}") from None
            if not 8 <= net.prefixlen <= 24:
                raise SpecError(f"subnet {net} must be between /8 and /24")
            if net.is_loopback or net.is_multicast or net.is_link_local or net.is_reserved \
                    or net.is_unspecified or net.network_address.packed[0] == 0:
                raise SpecError(f"subnet {net} is not for hosts (loopback, multicast, "
                                "link-local or reserved)")
            subnet = net
        self._set("subnet", subnet)
        if not isinstance(host_route, bool):
            raise SpecError(f"host_route must be True or False, not {host_route!r}")
        self._set("host_route", host_route)

    @property
    def domain(self) -> str:
        return f"{self.name}.{NETWORK_DOMAIN}"

    def __enter__(self) -> Network:
        # The network (its hub, addresses, names) lives while the block runs:
        # not pure, so the hooks are _process's (registered when nsbox loads).
        NETWORK_HOOKS["hold"](self)
        return self

    def __exit__(self, *exc: object) -> None:
        NETWORK_HOOKS["unhold"](self)

    def describe(self) -> str:
        return (f"network {self.name}" + (f" ({self.subnet})" if self.subnet else "")
                + (", routed from the host" if self.host_route else ""))


class Publish(Frozen):
    """A host port forwarded to a sandbox's port: docker's `-p [ADDR:]HOSTPORT:PORT`.

    `host_port` 0 asks for any free port (see Sandbox.published).
    """

    __slots__ = ("host_address", "host_port", "port")
    host_address: str
    host_port: int
    port: int

    def __init__(self, host_port: object, port: object, host_address: object = "127.0.0.1"):
        import ipaddress

        try:
            addr = ipaddress.IPv4Address(host_address)
        except (ValueError, TypeError):
            raise SpecError(f"publish: {host_address!r} is not an IPv4 address") from None
        self._set("host_address", str(addr))
        self._set("host_port", _port(host_port, "publish: host port", allow_zero=True))
        self._set("port", _port(port, "publish: port", allow_zero=False))

    @classmethod
    def parse(cls, value: object) -> Publish:
        """From "[ADDR:]HOSTPORT:PORT", (host_port, port), (addr, host_port, port) or a Publish."""
        if isinstance(value, Publish):
            return value
        if isinstance(value, str):
            parts = value.split(":")
            if len(parts) == 2:
                return cls(_port_text(parts[0]), _port_text(parts[1]))
            if len(parts) == 3:
                return cls(_port_text(parts[1]), _port_text(parts[2]), parts[0])
            raise SpecError(f"publish {value!r} is not [ADDR:]HOSTPORT:PORT")
        if isinstance(value, (tuple, list)):
            if len(value) == 2:
                return cls(value[0], value[1])
            if len(value) == 3:
                return cls(value[1], value[2], value[0])
        raise SpecError(
            f"publish entries are (host_port, port), (addr, host_port, port) or "
            f"'[ADDR:]HOSTPORT:PORT', not {value!r}"
        )

    def describe(self) -> str:
        return f"publish {self.host_address}:{self.host_port}:{self.port}"


def _decimal(text: str) -> int | None:
    """ASCII decimal digits (at most 20) as an int; else None. (str.isdigit
    alone takes '²' and other digits int() refuses, and int() of a very long
    string is a ValueError of its own.)"""
    text = text.strip()
    if text and len(text) <= 20 and text.isascii() and text.isdigit():
        return int(text)
    return None


def _shown(value: object) -> str:
    """repr(value), cut short: a message names the value, not all of a huge one."""
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + "...(" + str(len(text)) + " chars)"


def check_port(value: object) -> int:
    """A TCP port to connect to (1-65535), or SpecError."""
    return _port(value, "port", allow_zero=False)


def _port_text(text: str) -> object:
    number = _decimal(text)
    return text if number is None else number


def _port(value: object, what: str, *, allow_zero: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{what} must be an integer, not {_shown(value)}")
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise SpecError(f"{what} must be between {low} and 65535: {_shown(value)}")
    return value


def _network(value: object) -> str | Network:
    if value is None or isinstance(value, Network):
        return value
    if isinstance(value, str):
        if value in NETWORK_MODES:
            return value
        return Network(value)  # "bridge" is the default network
    raise SpecError(
        f"network must be 'none', 'host', a network's name or an nsbox.Network, not {value!r}"
    )


def check_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{what} must be an integer, not {value!r}")
    if value < 0 or value > MAX_ID:
        raise SpecError(f"{what} must be between 0 and {MAX_ID}: {value}")
    return value


def parse_size(value: object, what: str = "size") -> int:
    """Bytes from an int or a string like '64M', '1g', '512KiB' (binary units)."""
    if isinstance(value, bool):
        raise SpecError(f"{what} must be a number of bytes or a string like '64M', not {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        parsed = _parse_size_text(value)
        if parsed is None:
            raise SpecError(f"{what} {_shown(value)} is not a size (e.g. 65536, '64M', '1G')")
        size = parsed
    else:
        raise SpecError(f"{what} must be a number of bytes or a string like '64M', not {value!r}")
    if size <= 0:
        raise SpecError(f"{what} must be positive: {value!r}")
    if size >= 2**63:
        raise SpecError(f"{what} is too large: {value!r}")
    return size


class Bind(Frozen):
    """Bind host path `src` at `dst` inside the sandbox (default: the same path)."""

    __slots__ = ("src", "dst", "readonly")
    src: str
    dst: str
    readonly: bool

    def __init__(self, src: object, dst: object = None, readonly: object = False):
        src = check_path(src, "bind source")
        dst = check_path(src if dst is None else dst, "bind target", allow_root=False)
        if not isinstance(readonly, bool):
            raise SpecError(f"readonly must be a bool, not {readonly!r}")
        self._set("src", src)
        self._set("dst", dst)
        self._set("readonly", readonly)

    def describe(self) -> str:
        kind = "ro-bind" if self.readonly else "bind"
        return f"{kind} {self.src} -> {self.dst}"


class Tmpfs(Frozen):
    """A fresh tmpfs at `dst`; `size` in bytes or like '64M' (None: the kernel's default)."""

    __slots__ = ("dst", "size", "mode")
    dst: str
    size: int | None
    mode: int

    def __init__(self, dst: object, size: object = None, mode: object = 0o755):
        self._set("dst", check_path(dst, "tmpfs target", allow_root=False))
        self._set("size", None if size is None else parse_size(size, "tmpfs size"))
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise SpecError(f"tmpfs mode must be an integer between 0 and 0o7777: {mode!r}")
        self._set("mode", mode)

    def describe(self) -> str:
        size = f" size={self.size}" if self.size is not None else ""
        return f"tmpfs {self.dst}{size}"


Mount = Bind | Tmpfs


def format_size(size: int) -> str:
    """Bytes as the largest exact binary unit: 268435456 -> '256M'."""
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str) and value.isascii() and len(value) <= 64:
            try:
                return _number(float(value), what)
            except ValueError:
                pass
        raise SpecError(f"{what} must be a number, not {_shown(value)}")
    if isinstance(value, int) and abs(value) > 2**63:
        raise SpecError(f"{what} is too large: {_shown(value)}")
    if value != value or value in (float("inf"), float("-inf")):
        raise SpecError(f"{what} must be a finite number: {value!r}")
    return value


def _count(value: object, what: str, minimum: int, maximum: int) -> int:
    if isinstance(value, str) and _decimal(value) is not None:
        value = _decimal(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{what} must be an integer, not {_shown(value)}")
    if not minimum <= value <= maximum:
        raise SpecError(f"{what} must be between {minimum} and {maximum}: {_shown(value)}")
    return value


def _rlimit_size(value: object, what: str) -> int:
    """Bytes for RLIMIT_FSIZE/RLIMIT_CORE, where 0 is meaningful (no file, no core)."""
    if value == 0 and not isinstance(value, bool):
        return 0
    if isinstance(value, str) and value.strip() == "0":
        return 0
    return parse_size(value, what)


# RLIMIT_CPU's unit is whole seconds; more than this is no limit at all.
MAX_CPU_TIME = 2**31
MAX_NOFILE = 2**30  # the kernel's ceiling for fs.nr_open
MIN_MEMORY = 1 << 20
CPU_PERIOD_US = 100_000  # the cfs period nsbox uses for cpus=
MIN_CPUS = 0.01  # a 1 ms quota per 100 ms period: the kernel's minimum quota


class Limits(Frozen):
    """Resource limits for a sandbox.

    cgroup limits (the sandbox gets a cgroup of its own): `memory` (bytes or
    '256M'), `memory_swap` (memory plus swap, as docker's --memory-swap; -1 for
    unlimited swap), `pids` (tasks at once, the sandbox's init included),
    `cpus` (CPUs' worth of time, e.g. 0.5). rlimits of the command:
    `cpu_time` (seconds of CPU, RLIMIT_CPU), `nofile` (open files), `fsize`
    (largest file written, bytes), `core` (core dump size, 0 for none).
    `cgroup_parent`: the cgroup (a path as in /proc/self/cgroup) under which
    the sandbox's cgroup is made; with it the sandbox gets a cgroup even
    without cgroup limits.
    """

    __slots__ = ("memory", "memory_swap", "pids", "cpus", "cpu_time", "nofile", "fsize", "core",
                 "cgroup_parent")
    memory: int | None
    memory_swap: int | None  # -1: unlimited
    pids: int | None
    cpus: float | None
    cpu_time: int | None
    nofile: int | None
    fsize: int | None
    core: int | None
    cgroup_parent: str | None

    def __init__(self, memory: object = None, memory_swap: object = None, pids: object = None,
                 cpus: object = None, cpu_time: object = None, nofile: object = None,
                 fsize: object = None, core: object = None, cgroup_parent: object = None):
        if memory is not None:
            memory = parse_size(memory, "memory")
            if memory < MIN_MEMORY:
                raise SpecError(f"memory must be at least 1M: {memory}")
        if memory_swap is not None:
            if memory_swap in (-1, "-1"):
                memory_swap = -1
            else:
                memory_swap = parse_size(memory_swap, "memory_swap")
            if memory is None:
                raise SpecError("memory_swap needs memory (it is memory plus swap)")
            if memory_swap != -1 and memory_swap < memory:
                raise SpecError(
                    f"memory_swap ({format_size(memory_swap)}) is memory plus swap: it must "
                    f"not be less than memory ({format_size(memory)})"
                )
        if pids is not None:
            pids = _count(pids, "pids", 1, 2**22)
        if cpus is not None:
            cpus = float(_number(cpus, "cpus"))
            machine = os.cpu_count() or 1
            if not MIN_CPUS <= cpus <= machine:
                raise SpecError(
                    f"cpus must be between {MIN_CPUS} and {machine} (this machine's CPUs): "
                    f"{cpus:g}"
                )
        if cpu_time is not None:
            seconds = _number(cpu_time, "cpu_time")
            if not 0 < seconds <= MAX_CPU_TIME:
                raise SpecError(f"cpu_time must be a positive number of seconds: {cpu_time!r}")
            cpu_time = -int(-seconds // 1)  # whole seconds, rounded up
        if nofile is not None:
            nofile = _count(nofile, "nofile", 1, MAX_NOFILE)
        if fsize is not None:
            fsize = _rlimit_size(fsize, "fsize")
        if core is not None:
            core = _rlimit_size(core, "core")
        if cgroup_parent is not None:
            cgroup_parent = check_path(cgroup_parent, "cgroup_parent")
        for name, value in zip(self.__slots__, (memory, memory_swap, pids, cpus, cpu_time,
                                                nofile, fsize, core, cgroup_parent), strict=True):
            self._set(name, value)

    @property
    def controllers(self) -> frozenset[str]:
        """The cgroup controllers these limits need."""
        out = set()
        if self.memory is not None:
            out.add("memory")
        if self.pids is not None:
            out.add("pids")
        if self.cpus is not None:
            out.add("cpu")
        return frozenset(out)

    @property
    def needs_cgroup(self) -> bool:
        return bool(self.controllers) or self.cgroup_parent is not None

    def describe(self) -> str:
        parts = []
        for name in self.__slots__:
            value = getattr(self, name)
            if value is None:
                continue
            if name in ("memory", "memory_swap", "fsize", "core") and value > 0:
                value = format_size(value)
            parts.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
        return "limits " + ", ".join(parts) if parts else "no limits"


def _limits(value: object) -> Limits | None:
    if value is None or isinstance(value, Limits):
        return value
    if hasattr(value, "keys") and hasattr(value, "items"):
        try:
            return Limits(**dict(value))
        except TypeError as exc:
            raise SpecError(f"limits: {exc}") from None
    raise SpecError(f"limits must be an nsbox.Limits or a mapping, not {value!r}")


def _args(value: object) -> tuple[str, ...]:
    if isinstance(value, (str, bytes, os.PathLike)):
        items = [value]
    else:
        try:
            items = list(value)
        except TypeError:
            raise SpecError(f"args must be a sequence of strings, not {value!r}") from None
    if not items:
        raise SpecError("args must not be empty")
    out = tuple(_fs(item, "argument") for item in items)
    if not out[0]:
        raise SpecError("the command (args[0]) must not be empty")
    return out


def _env(value: object) -> tuple[tuple[str, str], ...] | None:
    if value is None:
        return None
    if hasattr(value, "keys") and hasattr(value, "items"):  # a mapping
        items = list(value.items())
    else:
        try:
            items = [tuple(pair) for pair in value]
        except TypeError:
            raise SpecError(f"env must be a mapping, not {type(value).__name__}") from None
    out: dict[str, str] = {}
    for pair in items:
        if len(pair) != 2:
            raise SpecError(f"env items must be (name, value) pairs: {pair!r}")
        key = _fs(pair[0], "environment variable name")
        val = _fs(pair[1], f"environment variable {key}")
        if not key or "=" in key:
            raise SpecError(f"invalid environment variable name: {key!r}")
        out[key] = val
    return tuple(out.items())


def _pass_fds(value: object) -> tuple[int, ...]:
    try:
        fds = list(value)
    except TypeError:
        raise SpecError(f"pass_fds must be a sequence of fds, not {value!r}") from None
    for fd in fds:
        if isinstance(fd, bool) or not isinstance(fd, int) or not 0 <= fd <= MAX_FD:
            raise SpecError(f"pass_fds must hold fd numbers between 0 and {MAX_FD}: {fd!r}")
    return tuple(sorted({fd for fd in fds if fd > 2}))


def _mounts(value: object) -> tuple[Mount, ...]:
    if isinstance(value, (Bind, Tmpfs)):
        value = [value]
    try:
        mounts = tuple(value)
    except TypeError:
        raise SpecError(f"mounts must be a sequence of Bind/Tmpfs, not {value!r}") from None
    seen: set[str] = set()
    for m in mounts:
        if not isinstance(m, (Bind, Tmpfs)):
            raise SpecError(f"mounts must hold nsbox.Bind or nsbox.Tmpfs, not {m!r}")
        if m.dst in seen:
            raise SpecError(f"two mounts at the same target: {m.dst}")
        seen.add(m.dst)
    return mounts


def _namespaces(value: object, network: str) -> frozenset[str]:
    if value is None:
        chosen = set(NAMESPACES)
        if network == "host":
            chosen.discard("net")
        return frozenset(chosen)
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    try:
        names = list(value)
    except TypeError:
        raise SpecError(f"namespaces must be a collection of names, not {value!r}") from None
    for name in names:
        if name not in NAMESPACES:
            raise SpecError(f"unknown namespace {name!r} (known: {', '.join(NAMESPACES)})")
    chosen = frozenset(names)
    if network == "host" and "net" in chosen:
        raise SpecError(
            "network='host' shares the host's network: do not ask for a 'net' namespace"
        )
    if network == "none" and "net" not in chosen:
        raise SpecError("network='none' needs the 'net' namespace (use network='host' to share)")
    return chosen


class Spec(Frozen):
    """A validated, frozen, reusable description of a sandbox.

    The option names are those of nsbox.run; a Spec is accepted wherever
    options are, and options given beside it override its fields.
    """

    __slots__ = ("args", "env", "cwd", "pass_fds", "rootfs", "mounts", "network", "hostname",
                 "uid", "gid", "namespaces", "limits", "name", "publish")
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] | None
    cwd: str | None
    pass_fds: tuple[int, ...]
    rootfs: str | None
    mounts: tuple[Mount, ...]
    network: str | Network
    hostname: str | None
    uid: int | None
    gid: int | None
    namespaces: frozenset[str]
    limits: Limits | None
    name: str | None
    publish: tuple[Publish, ...]

    def __init__(self, args: object, env: object = None, cwd: object = None,
                 pass_fds: object = (), rootfs: object = None, mounts: object = (),
                 network: object = None, hostname: object = None, uid: object = None,
                 gid: object = None, namespaces: object = None, limits: object = None,
                 name: object = None, publish: object = ()):
        set_ = object.__setattr__
        for field, value in (("args", args), ("env", env), ("cwd", cwd), ("pass_fds", pass_fds),
                             ("rootfs", rootfs), ("mounts", mounts), ("network", network),
                             ("hostname", hostname), ("uid", uid), ("gid", gid),
                             ("namespaces", namespaces), ("limits", limits), ("name", name),
                             ("publish", publish)):
            set_(self, field, value)
        explicit = self.namespaces
        if isinstance(explicit, str):
            explicit = [v for v in explicit.split(",") if v]
        if explicit is not None:
            try:
                explicit = tuple(explicit)  # an iterator must be read once only
            except TypeError:
                raise SpecError(
                    f"namespaces must be a collection of names, not {explicit!r}"
                ) from None
            set_(self, "namespaces", explicit)
        if self.network is None:
            # Derived: no 'net' among explicit namespaces means the host's network.
            shares = explicit is not None and "net" not in explicit
            set_(self, "network", "host" if shares else "none")
        set_(self, "network", _network(self.network))
        joined = isinstance(self.network, Network)
        set_(self, "args", _args(self.args))
        set_(self, "env", _env(self.env))
        if self.cwd is not None:
            set_(self, "cwd", check_path(self.cwd, "cwd"))
        set_(self, "pass_fds", _pass_fds(self.pass_fds))
        if self.rootfs is not None:
            set_(self, "rootfs", check_path(self.rootfs, "rootfs"))
        set_(self, "mounts", _mounts(self.mounts))
        if self.hostname is not None:
            set_(self, "hostname", check_hostname(self.hostname))
        if self.uid is not None:
            set_(self, "uid", check_id(self.uid, "uid"))
        if self.gid is not None:
            set_(self, "gid", check_id(self.gid, "gid"))
        ns = _namespaces(self.namespaces, "none" if joined else self.network)
        set_(self, "namespaces", ns)
        if self.name is not None:
            set_(self, "name", check_name(self.name, "name"))
        if isinstance(self.publish, (str, Publish)):
            set_(self, "publish", (self.publish,))
        try:
            publish = tuple(Publish.parse(p) for p in self.publish)
        except TypeError:
            raise SpecError(f"publish must be a list of ports, not {self.publish!r}") from None
        set_(self, "publish", publish)
        if not joined and (self.name is not None or publish):
            raise SpecError("name and publish need a network (network='NAME' or nsbox.Network)")
        if joined and "net" not in ns:
            raise SpecError(f"network={self.network.name!r} needs the 'net' namespace")
        hosts = {(p.host_address, p.host_port) for p in publish if p.host_port}
        if len(hosts) < len([p for p in publish if p.host_port]):
            raise SpecError("publish names one host port twice")
        if "mount" not in ns and (self.rootfs is not None or self.mounts):
            raise SpecError("rootfs and mounts need the 'mount' namespace")
        if self.hostname is not None and "uts" not in ns:
            raise SpecError("hostname needs the 'uts' namespace")
        limits = _limits(self.limits)
        if limits is not None and limits == Limits():
            limits = None
        set_(self, "limits", limits)
        if limits is not None and limits.pids is not None and limits.pids < 2:
            # nsbox-init is in the cgroup too, pid 1 or not.
            raise SpecError(f"pids={limits.pids}: at least 2, the sandbox's init is one task")

    @property
    def environ(self) -> dict[str, str] | None:
        """The environment as a dict, or None to inherit the caller's."""
        return None if self.env is None else dict(self.env)

    def replace(self, **changes: object) -> Spec:
        """A copy with some fields changed (args too), validated again."""
        args = changes.pop("args", self.args)
        return make_spec(self if args is self.args else Spec(args, **_fields(self, "args")),
                         **changes)


SPEC_FIELDS = Spec.__slots__


def _fields(spec: Spec, *skip: str) -> dict[str, object]:
    return {name: getattr(spec, name) for name in SPEC_FIELDS if name not in skip}
SPEC_OPTIONS = frozenset(SPEC_FIELDS) - {"args"}


def _frozen_value(value: object) -> object:
    """A hashable stand-in for an option's value that equals another's only
    when make_spec would read both the same (types compared too: 1 is not
    True). TypeError for kinds not known to be safe: those take the slow way."""
    kind = type(value)
    if kind in _PLAIN:
        return kind, value
    if kind in (tuple, list):
        return kind, tuple(_frozen_value(v) for v in value)
    if kind in (frozenset, set):
        return kind, frozenset(_frozen_value(v) for v in value)
    if isinstance(value, Frozen):
        return kind, value
    raise TypeError(kind.__name__)


_PLAIN = frozenset({str, bytes, int, float, bool, type(None)})


def _signature(options: dict) -> tuple:
    return tuple(sorted((k, _frozen_value(v)) for k, v in options.items()))


MEMO_MAX = 256  # entries a memo of Specs keeps before it starts over


def remembered(cache: dict, key_of, make, *args):
    """make(*args), remembered in `cache` under key_of(*args) when that key is
    made of values _frozen_value knows (else a TypeError: made each time);
    bounded, cleared when full. For pure makers only: the memo changes nothing
    but the cost."""
    try:
        key = key_of(*args)
        value = cache.get(key)  # (hashing: an nsbox value may hold something unhashable)
    except TypeError:  # a value of a kind not known to compare safely
        return make(*args)
    if value is None:
        value = make(*args)
        if len(cache) >= MEMO_MAX:
            cache.clear()
        cache[key] = value
    return value


# Specs made from plain values, by their signature: the same call (say
# nsbox.run(["make", "test"], cwd=...), again and again) gets the same Spec, not
# a new one validated, built and hashed each time. Validation is pure.
_memo: dict[tuple, Spec] = {}


def make_spec(args: object, **options: object) -> Spec:
    """A Spec from args (or a Spec) and options; unknown options are a TypeError."""
    if isinstance(args, Spec):
        return _make_spec(args, options)
    return remembered(_memo, _spec_key, _make_spec, args, options)


def _spec_key(args: object, options: dict) -> tuple:
    return _frozen_value(args), _signature(options)


def _make_spec(args: object, options: dict) -> Spec:
    unknown = set(options) - SPEC_OPTIONS
    if unknown:
        raise TypeError(f"unexpected sandbox option(s): {', '.join(sorted(unknown))}")
    if isinstance(args, Spec):
        if not options:
            return args
        fields = _fields(args)
        if "network" in options and "namespaces" not in options:
            fields["namespaces"] = None
        if "namespaces" in options and "network" not in options:
            fields["network"] = None
        fields.update(options)
        return Spec(**fields)
    return Spec(args, **options)

