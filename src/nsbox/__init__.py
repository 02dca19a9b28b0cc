"""nsbox: fast Linux namespace sandboxes with a native core.

    import nsbox
    result = nsbox.run(["echo", "hi"], capture_output=True, text=True)
"""

from ._errors import (
    CapacityError,
    CommandNotExecutableError,
    CommandNotFoundError,
    ExecError,
    LimitError,
    MountError,
    NetworkSetupError,
    NsboxError,
    NsboxInternalError,
    PrivilegeDropError,
    SandboxSetupError,
    SpawnError,
    SpecError,
    UnsupportedError,
)
from ._process import DEVNULL, PHASES, PIPE, STDOUT, Sandbox, run
from ._spec import NAMESPACES, Bind, Limits, Network, Publish, Spec, Tmpfs

__version__ = "0.1.0"


def __getattr__(name: str):
    # Result subclasses subprocess.CompletedProcess: imported on first use so
    # that `python -m nsbox run` does not pay for importing subprocess.
    if name == "Result":
        from ._result import Result

        return Result
    if name in ("open_supervisor", "Supervisor", "SupervisedSandbox", "SupervisorStatistics",
                "Pool"):
        # trio is imported only by those who use the supervisor.
        from . import _supervisor

        return getattr(_supervisor, name)
    if name == "Stats":
        from ._stats import Stats

        return Stats
    raise AttributeError(f"module 'nsbox' has no attribute {name!r}")

__all__ = [
    "run",
    "Sandbox",
    "open_supervisor",
    "Supervisor",
    "SupervisedSandbox",
    "SupervisorStatistics",
    "Pool",
    "CapacityError",
    "Result",
    "Spec",
    "Bind",
    "Tmpfs",
    "Limits",
    "Network",
    "Publish",
    "Stats",
    "NAMESPACES",
    "PHASES",
    "PIPE",
    "DEVNULL",
    "STDOUT",
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
    "NsboxInternalError",
    "__version__",
]
