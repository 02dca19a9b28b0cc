"""Frozen, validated descriptions of a sandbox: Spec, Bind, Tmpfs (pure).

Everything here is a pure function of its input: no syscalls, no filesystem
access. Any input either builds a value or raises SpecError naming the value
at fault.
"""

from __future__ import annotations

import os
import posixpath

from ._errors import SpecError
from ._frozen import Frozen, FrozenInstanceError

__all__ = ["Spec", "Bind", "Tmpfs", "NAMESPACES", "NETWORK_MODES", "parse_size", "make_spec",
           "FrozenInstanceError"]

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
            raise SpecError(f"{what} {value!r} is not a size (e.g. 65536, '64M', '1G')")
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
                 "uid", "gid", "namespaces")
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] | None
    cwd: str | None
    pass_fds: tuple[int, ...]
    rootfs: str | None
    mounts: tuple[Mount, ...]
    network: str
    hostname: str | None
    uid: int | None
    gid: int | None
    namespaces: frozenset[str]

    def __init__(self, args: object, env: object = None, cwd: object = None,
                 pass_fds: object = (), rootfs: object = None, mounts: object = (),
                 network: object = None, hostname: object = None, uid: object = None,
                 gid: object = None, namespaces: object = None):
        set_ = object.__setattr__
        for name, value in (("args", args), ("env", env), ("cwd", cwd), ("pass_fds", pass_fds),
                            ("rootfs", rootfs), ("mounts", mounts), ("network", network),
                            ("hostname", hostname), ("uid", uid), ("gid", gid),
                            ("namespaces", namespaces)):
            set_(self, name, value)
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
        if not isinstance(self.network, str) or self.network not in NETWORK_MODES:
            raise SpecError(
                f"unknown network mode {self.network!r} (known: {', '.join(NETWORK_MODES)})"
            )
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
        ns = _namespaces(self.namespaces, self.network)
        set_(self, "namespaces", ns)
        if "mount" not in ns and (self.rootfs is not None or self.mounts):
            raise SpecError("rootfs and mounts need the 'mount' namespace")
        if self.hostname is not None and "uts" not in ns:
            raise SpecError("hostname needs the 'uts' namespace")

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


def make_spec(args: object, **options: object) -> Spec:
    """A Spec from args (or a Spec) and options; unknown options are a TypeError."""
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

