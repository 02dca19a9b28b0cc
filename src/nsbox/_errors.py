"""The exception tree, the stage -> exception table and the one-line messages.

NsboxError
├── SpecError(NsboxError, ValueError)          invalid spec, before any syscall
├── UnsupportedError(NsboxError, OSError)      host lacks a feature; .hint says what to change
├── SpawnError(NsboxError, OSError)            the parent side failed (clone, pipe)
├── SandboxSetupError(NsboxError, OSError)     the child failed before exec: .stage .errno .op
│   ├── MountError, NetworkSetupError, LimitError, PrivilegeDropError
│   └── ExecError -> CommandNotFoundError (127), CommandNotExecutableError (126)
├── CapacityError(NsboxError, RuntimeError)    the supervisor is full: .limit says which
└── NsboxInternalError                         a broken invariant: a bug in nsbox
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "NsboxError",
    "SpecError",
    "UnsupportedError",
    "SpawnError",
    "SandboxSetupError",
    "MountError",
    "NetworkSetupError",
    "LimitError",
    "PrivilegeDropError",
    "ExecError",
    "CommandNotFoundError",
    "CommandNotExecutableError",
    "CapacityError",
    "NsboxInternalError",
]

# Stage numbers as in csrc/nsbox.h (checked against the compiled module by a native test).
STAGE_NAMES = {
    0: "none",
    1: "clone",
    2: "parent-death",
    3: "cgroup",
    4: "setgroups",
    5: "uid-map",
    6: "gid-map",
    7: "mount-private",
    8: "root",
    9: "mount",
    10: "pivot-root",
    11: "hostname",
    12: "loopback",
    13: "caps",
    14: "setid",
    15: "fds",
    16: "chdir",
    17: "exec-init",
    18: "init",
    19: "rlimit",
    20: "exec",
    21: "network",
}
STAGE_NUMBERS = {name: number for number, name in STAGE_NAMES.items()}


class NsboxError(Exception):
    """Base of every error nsbox raises."""


class SpecError(NsboxError, ValueError):
    """The sandbox description is invalid; raised before any syscall."""


class _OSLike(NsboxError, OSError):
    """An OSError whose str() is nsbox's one-line message."""

    def __init__(self, err: int, message: str):
        OSError.__init__(self, err, message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (type(self), (self.errno, self.message))


class UnsupportedError(_OSLike):
    """The host lacks something the sandbox needs; `.hint` names what to change."""

    def __init__(self, err: int, message: str, hint: str = ""):
        super().__init__(err, message if not hint else f"{message} ({hint})")
        self.hint = hint

    def __reduce__(self):
        return (_rebuild, (type(self), self.__dict__, (self.errno, self.message)))


class SpawnError(_OSLike):
    """The parent side of starting a sandbox failed (pipe, clone)."""


class SandboxSetupError(_OSLike):
    """The sandbox's setup failed in the child, before the command ran.

    `.stage` is the stage's name, `.errno` the error, `.op` the spec element at
    fault (a Bind, a Tmpfs, a path...) or None.
    """

    def __init__(self, err: int, message: str, stage: str = "none", op: object = None):
        super().__init__(err, message)
        self.stage = stage
        self.op = op

    def __reduce__(self):
        return (_rebuild, (type(self), self.__dict__, (self.errno, self.message)))


def _rebuild(cls, state, args):
    obj = cls.__new__(cls)
    OSError.__init__(obj, *args)
    obj.__dict__.update(state)
    return obj


class MountError(SandboxSetupError):
    """Building the sandbox's filesystem failed."""


class NetworkSetupError(SandboxSetupError):
    """Setting up the sandbox's network failed."""


class LimitError(SandboxSetupError):
    """Applying a resource limit failed."""


class PrivilegeDropError(SandboxSetupError):
    """Changing to the requested identity failed."""


class ExecError(SandboxSetupError):
    """The command could not be executed."""

    exit_code = 126


class CommandNotFoundError(ExecError):
    """The command does not exist inside the sandbox (exit code 127)."""

    exit_code = 127


class CommandNotExecutableError(ExecError):
    """The command exists but cannot be executed (exit code 126)."""

    exit_code = 126


class CapacityError(NsboxError, RuntimeError):
    """The supervisor cannot start another sandbox now (start(..., wait=False)).

    `.limit` names the limit that is full (e.g. "max_live", "RLIMIT_NOFILE",
    "pid_max"), `.capacity` how many sandboxes it allows.
    """

    def __init__(self, message: str, limit: str = "", capacity: int = 0):
        super().__init__(message)
        self.limit = limit
        self.capacity = capacity

    def __reduce__(self):
        return (type(self), (str(self), self.limit, self.capacity))


class NsboxInternalError(NsboxError):
    """A broken invariant inside nsbox: please report it."""


_STAGE_CLASS = {
    "mount-private": MountError,
    "root": MountError,
    "mount": MountError,
    "pivot-root": MountError,
    "loopback": NetworkSetupError,
    "network": NetworkSetupError,
    "setid": PrivilegeDropError,
    "caps": PrivilegeDropError,
    "cgroup": LimitError,
    "rlimit": LimitError,
}


def describe_op(op: object) -> str:
    """How a spec element is named in messages."""
    describe = getattr(op, "describe", None)
    if describe is not None:
        return describe()
    return str(op)


# Control characters and every other line break str.splitlines() knows.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127, 0x85]}
_CONTROL.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029)})


def oneline(text: str) -> str:
    """`text` with control characters (newlines too) escaped: messages stay one line."""
    return text.translate(_CONTROL)


def setup_error(stage_no: int, err: int, op: object = None, command: str = "") -> SandboxSetupError:
    """The exception for a failure record from the child or from init."""
    stage = STAGE_NAMES.get(stage_no, f"stage-{stage_no}")
    command = oneline(command)
    reason = os.strerror(err) if err > 0 else f"error {err}"
    if stage == "exec":
        if err == _errno.ENOENT:
            return CommandNotFoundError(
                err, f"nsbox: command not found: {command}", stage=stage, op=command
            )
        return CommandNotExecutableError(
            err, f"nsbox: cannot execute {command}: {reason}", stage=stage, op=command
        )
    cls = _STAGE_CLASS.get(stage, SandboxSetupError)
    where = f"{stage} ({oneline(describe_op(op))})" if op is not None else stage
    return cls(err, f"nsbox: setup failed at {where}: {reason}", stage=stage, op=op)


_CLONE_HINTS = {
    _errno.EPERM: (
        "user namespaces look disabled for this user: check the sysctls "
        "kernel.unprivileged_userns_clone and user.max_user_namespaces, and AppArmor's "
        "kernel.apparmor_restrict_unprivileged_userns"
    ),
    _errno.ENOSPC: "a namespace limit was reached: see /proc/sys/user/max_*_namespaces",
    _errno.EUSERS: "too many nested user namespaces",
    _errno.EINVAL: "the kernel does not support a requested namespace or clone flag",
}


def clone_error(err: int, namespaces: frozenset[str]) -> NsboxError:
    """The exception for a failed clone in the parent."""
    reason = os.strerror(err)
    if err in _CLONE_HINTS and namespaces:
        return UnsupportedError(
            err,
            f"nsbox: cannot create namespaces ({','.join(sorted(namespaces))}): {reason}",
            hint=_CLONE_HINTS[err],
        )
    return SpawnError(err, f"nsbox: clone failed: {reason}")
