"""Scale: sandboxes (all namespaces, each running `sleep`) held live under one
trio supervisor, in steps.

At each step: memory per sandbox (the kernel's, from /proc/meminfo deltas:
Slab, KernelStack, PageTables; and all of it, from MemAvailable), the
supervisor process's own memory per sandbox, and the latency of one more
start as the live count grows. Then teardown: leaving the supervisor's block
kills and reaps every sandbox, timed, and a check that no process is left.
"""

from __future__ import annotations

import time

from . import our_children
from .latency import percentile

TRUE = "/bin/true"
START_CONCURRENCY = 64


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
    import trio

    import nsbox

    steps = (10, 50) if quick else (100, 1000, 5000, 10000)
    probes = 10 if quick else 30
    out: dict[str, object] = {"steps": [], "command": ["sleep", "3600"], "skipped": {}}

    async def main():
        base_mem, base_rss = _meminfo(), _rss()
        async with nsbox.open_supervisor(grace=1.0) as sup:
            usable = [s for s in steps if s <= sup.capacity]
            for s in steps:
                if s > sup.capacity:
                    out["skipped"][str(s)] = (f"above the supervisor's capacity here: "
                                              f"{sup.capacity} ({sup.limit})")
            bar = progress("scale", (usable[-1] if usable else 0) + len(usable) * probes)
            live = 0
            limiter = trio.CapacityLimiter(START_CONCURRENCY)
            try:
                for step in usable:
                    t0 = time.perf_counter()
                    todo = step - live

                    async def one():
                        async with limiter:
                            await sup.start(["sleep", "3600"])
                        bar.step()

                    async with trio.open_nursery() as n:
                        for _ in range(todo):
                            n.start_soon(one)
                    live = step
                    start_rate = todo / (time.perf_counter() - t0)
                    await trio.sleep(0.2)  # let per-cpu caches settle a little
                    mem, rss = _meminfo(), _rss()
                    probe = []
                    for _ in range(probes):
                        t = time.perf_counter()
                        await sup.run([TRUE])
                        probe.append(time.perf_counter() - t)
                        bar.step()
                    probe.sort()
                    out["steps"].append({
                        "live": sup.statistics().live,
                        "kernel_bytes_per_sandbox": (_kernel(mem) - _kernel(base_mem)) / step,
                        "memory_bytes_per_sandbox": (base_mem["MemAvailable"]
                                                     - mem["MemAvailable"]) / step,
                        "supervisor_rss_bytes_per_sandbox": (rss - base_rss) / step,
                        "starts_per_s": start_rate,
                        "new_start_p50_ms": percentile(probe, 0.5) * 1e3,
                        "new_start_p95_ms": percentile(probe, 0.95) * 1e3,
                    })
            finally:
                bar.close()
                t_exit = time.perf_counter()
        out["teardown"] = {"sandboxes": live, "seconds": time.perf_counter() - t_exit}

    trio.run(main)
    deadline = time.monotonic() + 10
    while our_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    out["leaked"] = our_children()
    if out["teardown"]["sandboxes"]:
        out["teardown"]["floor"] = _floor_teardown(out["teardown"]["sandboxes"])
    _print(out)
    return out


def _floor_teardown(n: int) -> dict | None:
    """The C floor holding as many `sleep` children with the same namespaces,
    SIGKILLed and reaped at once: the kernel's part of a teardown."""
    import subprocess

    from .latency import build, compiler

    exe = build(compiler()).get("floor")
    if not exe:
        return None
    proc = subprocess.Popen([exe, "--ns", "all", "--hold", str(n), "/bin/sleep", "3600"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        started = proc.stdout.readline().split()
        proc.stdin.write("kill\n")
        proc.stdin.flush()
        reaped = proc.stdout.readline().split()
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
    if len(started) != 2 or len(reaped) != 3:
        return None
    return {"sandboxes": int(reaped[1]), "seconds": int(reaped[2]) / 1e9}


def _print(out: dict) -> None:
    print("\nscale: live sandboxes of `sleep` under one supervisor, all namespaces")
    print(f"  {'live':>6s} {'kernel/sb':>10s} {'memory/sb':>10s} {'sup RSS/sb':>10s} "
          f"{'starts/s':>9s} {'new start p50':>13s} {'p95':>8s}")
    for s in out["steps"]:
        print(f"  {s['live']:>6d} {s['kernel_bytes_per_sandbox'] / 1024:8.0f}KB "
              f"{s['memory_bytes_per_sandbox'] / 1024:8.0f}KB "
              f"{s['supervisor_rss_bytes_per_sandbox'] / 1024:8.1f}KB "
              f"{s['starts_per_s']:9.0f} {s['new_start_p50_ms']:11.2f}ms "
              f"{s['new_start_p95_ms']:6.2f}ms")
    td = out.get("teardown", {})
    if td.get("sandboxes"):
        print(f"  teardown: leaving the block killed and reaped {td['sandboxes']} sandboxes in "
              f"{td['seconds']:.2f} s")
        if td.get("floor"):
            print(f"  the C floor, as many `sleep` children with the same namespaces SIGKILLed "
                  f"and reaped at once: {td['floor']['seconds']:.2f} s")
    for step, why in out["skipped"].items():
        print(f"  skipped {step}: {why}")
    print("  processes left after teardown: " + (str(out["leaked"]) if out["leaked"] else "none"))
