"""nsbox: fast Linux namespace sandboxes with a native core.

    import nsbox
    result = nsbox.run(["echo", "hi"], capture_output=True, text=True)
"""

from ._errors import (
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
from ._process import DEVNULL, PIPE, STDOUT, Result, Sandbox, run
from ._spec import NAMESPACES, Bind, Spec, Tmpfs

__version__ = "0.1.0"

__all__ = [
    "run",
    "Sandbox",
    "Result",
    "Spec",
    "Bind",
    "Tmpfs",
    "NAMESPACES",
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
