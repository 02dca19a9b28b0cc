"""Stats of a sandbox, and why it ended (the only importer of psutil).

`Stats` is the value both views share: the final one (from init's rusage and
the cgroup, when the sandbox is reaped) and the live one (`Sandbox.stats()`
while it runs, from psutil over init's process tree and the cgroup).
"""

from __future__ import annotations

import signal

from ._frozen import Frozen

__all__ = ["Stats", "REASONS", "final", "live", "reason_for"]

REASONS = ("exited", "signaled", "timeout", "oom", "cpu_time", "killed")


class Stats(Frozen):
    """Resource use of a whole sandbox.

    wall_time: seconds from start to end (or to now, while it runs).
    user_time, system_time: CPU seconds of every process of the sandbox.
    peak_memory: bytes; the cgroup's peak when the sandbox has a memory
      cgroup, else the largest resident size any one of its processes reached
      (None if it was killed before its command ended: init reports it then).
    memory: bytes in use now (live view only; None once ended).
    pids: processes now (live view), pids_peak: the most at once, when the
      cgroup counts it (cgroup pids.peak, Linux 6.13+), else None.
    oom_kills: processes the cgroup's OOM killer killed (None without a
      memory cgroup).
    """

    __slots__ = ("wall_time", "user_time", "system_time", "peak_memory", "memory", "pids",
                 "pids_peak", "oom_kills")
    wall_time: float
    user_time: float
    system_time: float
    peak_memory: int | None
    memory: int | None
    pids: int | None
    pids_peak: int | None
    oom_kills: int | None

    def __init__(self, wall_time: float, user_time: float, system_time: float,
                 peak_memory: int | None = None, memory: int | None = None,
                 pids: int | None = None, pids_peak: int | None = None,
                 oom_kills: int | None = None):
        for name, value in zip(self.__slots__, (wall_time, user_time, system_time, peak_memory,
                                                memory, pids, pids_peak, oom_kills), strict=True):
            self._set(name, value)

    @property
    def cpu_time(self) -> float:
        return self.user_time + self.system_time

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


def final(wall_time: float, rusage, group, peak_kib: int | None = None) -> Stats:
    """Stats of a reaped sandbox: init's rusage covers every process it (or
    their parents) reaped; the cgroup, if any, knows the peaks. Without one,
    peak_kib (init's report: the largest resident size of the processes it
    reaped), if init lived to report it; init's own maxrss would count the
    caller's memory, which its setup shared until the exec."""
    peak = group.peak_memory() if group is not None else None
    if peak is None and peak_kib is not None:
        peak = peak_kib * 1024
    return Stats(
        wall_time=wall_time,
        user_time=rusage.ru_utime if rusage is not None else 0.0,
        system_time=rusage.ru_stime if rusage is not None else 0.0,
        peak_memory=peak,
        pids_peak=group.pids_peak() if group is not None else None,
        oom_kills=group.oom_kills() if group is not None else None,
    )


def live(pid: int, wall_time: float, group) -> Stats:
    """Stats of a running sandbox: init's process tree, as psutil sees it."""
    import psutil

    user = system = 0.0
    rss = 0
    count = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        procs = []
    for p in procs:
        try:
            with p.oneshot():
                t = p.cpu_times()
                mem = p.memory_info().rss
        except psutil.Error:
            continue  # ended meanwhile
        # children_*: descendants already reaped; disjoint from the live ones.
        user += t.user + t.children_user
        system += t.system + t.children_system
        rss += mem
        count += 1
    memory = group.memory_current() if group is not None else None
    return Stats(
        wall_time=wall_time,
        user_time=user,
        system_time=system,
        peak_memory=group.peak_memory() if group is not None else None,
        memory=rss if memory is None else memory,
        pids=count,
        pids_peak=group.pids_peak() if group is not None else None,
        oom_kills=group.oom_kills() if group is not None else None,
    )


def reason_for(returncode: int, stats: Stats, limits, cause: str | None) -> str:
    """Why a sandbox ended, most specific first.

    cause: 'timeout' or 'killed' when the caller ended it. Then 'oom' when the
    cgroup's OOM killer killed a process and the command failed; 'cpu_time'
    when the command died of SIGXCPU, or of SIGKILL with the sandbox's CPU time
    at least the hard limit (one second past the limit: the command alone
    used that much, as the kernel kills it then); else 'signaled' or
    'exited'.
    """
    signaled = returncode < 0
    if cause in ("timeout", "killed") and (signaled or cause == "timeout"):
        return cause
    if returncode != 0 and stats.oom_kills:
        return "oom"
    cpu_limit = getattr(limits, "cpu_time", None)
    if cpu_limit is not None and signaled:
        sig = -returncode
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and stats.cpu_time >= cpu_limit + 1):
            return "cpu_time"
    if cpu_limit is not None and returncode == 128 + signal.SIGXCPU:
        return "cpu_time"  # a shell reporting its child's SIGXCPU
    return "signaled" if signaled else "exited"

