"""Scale: sandboxes (all namespaces, each running `sleep`) held live in steps.

At each step: memory per sandbox (the kernel's, from /proc/meminfo deltas:
Slab, KernelStack, PageTables; and all of it, from MemAvailable), this
process's own memory per sandbox, and the latency of one more start as the
live count grows. Then teardown: kill + reap of every sandbox, timed, and a
check that no process is left. (Thousands of sandboxes under one supervisor
come with the trio supervisor; the steps here are bounded by threads' and
fds' costs of the synchronous API.)
"""

from __future__ import annotations

import statistics
import time

from . import our_children, pct, raise_nofile

TRUE = "/bin/true"


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0]) * 1024
    return out


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _kernel(m: dict[str, int]) -> int:
    return m.get("Slab", 0) + m.get("KernelStack", 0) + m.get("PageTables", 0)


def run(quick: bool, progress) -> dict:
    import nsbox

    steps = (10, 50) if quick else (100, 500, 1000)
    probes = 10 if quick else 30
    soft, _ = raise_nofile()
    steps = tuple(s for s in steps if 4 * s + 64 <= soft) or (min(steps[0], soft // 8),)
    base_mem, base_rss = _meminfo(), _rss()
    live: list[nsbox.Sandbox] = []
    out: dict[str, object] = {"steps": [], "command": ["sleep", "3600"]}
    bar = progress("scale", steps[-1] + len(steps) * probes + steps[-1])
    start_lat: list[float] = []
    try:
        for step in steps:
            while len(live) < step:
                t = time.perf_counter()
                live.append(nsbox.Sandbox(["sleep", "3600"]))
                start_lat.append(time.perf_counter() - t)
                bar.step()
            time.sleep(0.2)  # let the kernel settle its per-cpu caches a little
            mem, rss = _meminfo(), _rss()
            probe = []
            for _ in range(probes):
                t = time.perf_counter()
                nsbox.run([TRUE])
                probe.append(time.perf_counter() - t)
                bar.step()
            recent = sorted(start_lat[-min(step, 50):])
            out["steps"].append({
                "live": len(live),
                "kernel_bytes_per_sandbox": (_kernel(mem) - _kernel(base_mem)) / len(live),
                "memory_bytes_per_sandbox": (base_mem["MemAvailable"] - mem["MemAvailable"])
                / len(live),
                "self_rss_bytes_per_sandbox": (rss - base_rss) / len(live),
                "new_start_p50_ms": statistics.median(probe) * 1e3,
                "new_start_p95_ms": pct(sorted(probe), 0.95) * 1e3,
                "held_start_p50_ms": pct(recent, 0.5) * 1e3,
            })
    finally:
        t = time.perf_counter()
        n = len(live)
        for box in live:
            box.kill()
        for box in live:
            box.wait()
            box.close()
            bar.step()
        teardown = time.perf_counter() - t
        bar.close()
    deadline = time.monotonic() + 10
    while our_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = our_children()
    out["teardown"] = {"sandboxes": n, "seconds": teardown,
                       "ms_per_sandbox": teardown * 1e3 / n if n else None}
    out["leaked"] = left
    _print(out)
    return out


def _print(out: dict) -> None:
    print("\nscale: live sandboxes of `sleep`, all namespaces")
    print(f"  {'live':>6s} {'kernel/sb':>10s} {'memory/sb':>10s} {'self RSS/sb':>11s} "
          f"{'new start p50':>13s} {'p95':>7s}")
    for s in out["steps"]:
        print(f"  {s['live']:>6d} {s['kernel_bytes_per_sandbox'] / 1024:8.0f}KB "
              f"{s['memory_bytes_per_sandbox'] / 1024:8.0f}KB "
              f"{s['self_rss_bytes_per_sandbox'] / 1024:9.1f}KB "
              f"{s['new_start_p50_ms']:11.2f}ms {s['new_start_p95_ms']:5.2f}ms")
    td = out["teardown"]
    if td["sandboxes"]:
        print(f"  teardown: {td['sandboxes']} sandboxes killed and reaped in {td['seconds']:.2f} s "
              f"({td['ms_per_sandbox']:.2f} ms each)")
    print("  processes left after teardown: " + (str(out["leaked"]) if out["leaked"] else "none"))
