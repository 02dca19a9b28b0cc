"""Where nsbox's time goes: the phase timestamps of nsbox.run(['/bin/true'], timings=True).

Each phase's cost is the time from the previous phase to it (see nsbox.PHASES
and csrc/nsbox.h's NSBOX_PHASE_*). Asking for timestamps costs a handful of
clock reads per sandbox: the total is reported beside plain runs, interleaved.
"""

from __future__ import annotations

import random
import statistics
import time

from .latency import percentile

TRUE = "/bin/true"
NS_SETS = ("all", "all+network", "user+mnt+pid+uts+ipc", "user", "none")

# The caller resumes ("spawned") while nsbox-init starts on another CPU: the
# two run side by side, so both are measured from the child's last step.
AFTER = {"spawned": "exec_init", "init": "exec_init"}

WHAT = {
    "clone": "Python before the clone: plan (cached), pipes, the C spec",
    "child": "clone3 with the namespaces, until the child runs",
    "cgroup": "joining the cgroup (only with cgroup limits)",
    "id_map": "uid/gid maps",
    "mounts": "the root (read-only in place), /dev, /proc, /tmp, user mounts",
    "network": "hostname, loopback up (on a network: the hop's veth awaited, eth0 set up)",
    "privileges": "capability bounding set, no_new_privs, ids",
    "exec_init": "fds, cwd",
    "spawned": "(the caller's side) execveat of nsbox-init until the caller resumes",
    "init": "execveat of nsbox-init until it runs (alongside the caller's resuming)",
    "exec": "vfork + execve of the command",
    "exited": "the command runs and exits",
    "reaped": "init exits, the namespaces go, the caller reaps",
}


def run(quick: bool, progress) -> dict:
    import contextlib

    import nsbox

    from .latency import nsbox_kwargs, parse_ns_set

    n = 40 if quick else 400
    sets = NS_SETS[:2] if quick else NS_SETS
    out: dict[str, object] = {"runs": n, "ns_sets": {}}
    bar = progress("phases", n * len(sets) * 2)
    # "all+network": all namespaces, on a network (kept up for the whole set).
    network = nsbox.Network("nsbx-bench-phases")
    try:
        for label in sets:
            on_network = label.endswith("+network")
            kw = nsbox_kwargs(parse_ns_set(label.removesuffix("+network")))
            held = contextlib.nullcontext()
            if on_network:
                kw["network"], held = network, network
            with held:
                out["ns_sets"][label] = _measure(kw, n, bar)
    finally:
        bar.close()
    _print(out)
    return out


def _measure(kw: dict, n: int, bar) -> dict:
    import nsbox
    from nsbox._process import PHASES

    for _ in range(5):
        nsbox.run([TRUE], timings=True, **kw)
    timed: list[dict[str, float]] = []
    plain: list[float] = []
    for _ in range(n):
        order = [True, False]
        random.shuffle(order)
        for with_timings in order:
            t = time.perf_counter()
            r = nsbox.run([TRUE], timings=with_timings, **kw)
            elapsed = time.perf_counter() - t
            if with_timings:
                timed.append(r.timings)
            else:
                plain.append(elapsed)
            bar.step()
    steps = {}
    for phase in PHASES[1:]:
        prev = AFTER.get(phase) or PHASES[PHASES.index(phase) - 1]
        d = sorted((t[phase] - t[prev]) * 1e3 for t in timed if phase in t and prev in t)
        if d:
            steps[phase] = {"p50_ms": percentile(d, 0.5), "p95_ms": percentile(d, 0.95),
                            "p99_ms": percentile(d, 0.99), "what": WHAT.get(phase, "")}
    totals = sorted(t["reaped"] * 1e3 for t in timed)
    return {
        "phases": steps,
        "total_p50_ms": percentile(totals, 0.5),
        "plain_p50_ms": percentile(sorted(x * 1e3 for x in plain), 0.5),
    }


def _print(out: dict) -> None:
    for label, r in out["ns_sets"].items():
        total = r["total_p50_ms"]
        print(f"\nphases [{label}]: p50 of each step, ms (share of the total p50)")
        for phase, s in r["phases"].items():
            share = s["p50_ms"] / total if total else 0
            print(f"  {phase:11s} {s['p50_ms']:7.3f}  p95 {s['p95_ms']:7.3f}  {share:5.1%}  "
                  f"{s['what']}")
        overhead = r["total_p50_ms"] / r["plain_p50_ms"] if r["plain_p50_ms"] else float("nan")
        steps = statistics.fsum(s["p50_ms"] for k, s in r["phases"].items() if k != "spawned")
        print(f"  total p50 {total:.3f} ms with timestamps, {r['plain_p50_ms']:.3f} ms without "
              f"({overhead:.2f}x, interleaved); the sum of the step medians (without the "
              f"caller's side) is {steps:.3f} ms")
