"""nsbox.Result: a subprocess.CompletedProcess with the sandbox's pid.

Its own module, imported on first use, so that `python -m nsbox run` does not
import subprocess.
"""

from __future__ import annotations

import subprocess

__all__ = ["Result"]


class Result(subprocess.CompletedProcess):
    """What nsbox.run returns: a subprocess.CompletedProcess with the sandbox's
    pid, why it ended (`reason`: exited, signaled, timeout, oom, cpu_time or
    killed) and its resource use (`stats`, an nsbox.Stats)."""

    def __init__(self, args, returncode, stdout=None, stderr=None, pid=None, reason=None,
                 stats=None, timings=None):
        super().__init__(args, returncode, stdout, stderr)
        self.pid = pid
        self.reason = reason
        self.stats = stats
        self.timings = timings  # with timings=True: {phase: seconds since start}

    def __repr__(self) -> str:
        parts = [f"args={self.args!r}", f"returncode={self.returncode!r}", f"pid={self.pid!r}",
                 f"reason={self.reason!r}"]
        if self.stdout is not None:
            parts.append(f"stdout={self.stdout!r}")
        if self.stderr is not None:
            parts.append(f"stderr={self.stderr!r}")
        return f"Result({', '.join(parts)})"
