"""Throughput: sandboxes of /bin/true started, exited and reaped per second at
several concurrencies, with and without a network namespace, against the C
floor doing the same clones at the same concurrency, alternating.

nsbox runs as `concurrency` threads calling nsbox.run in a loop (the trio
supervisor, once it exists, will be measured here too); the floor as that
many `floor --serve` processes, each driven by a thread.
"""

from __future__ import annotations

import threading
import time

TRUE = "/bin/true"


def _rate(make_once, concurrency: int, seconds: float) -> dict:
    """Completions per second of `concurrency` threads each calling its own once()."""
    onces = [make_once() for _ in range(concurrency)]
    counts = [0] * concurrency
    failures = [0] * concurrency
    stop = time.monotonic() + seconds
    start = threading.Barrier(concurrency + 1)

    def worker(i: int) -> None:
        once = onces[i][0]
        start.wait()
        while time.monotonic() < stop:
            try:
                once()
                counts[i] += 1
            except Exception:  # noqa: BLE001 - counted, reported
                failures[i] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(concurrency)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    for _, close in onces:
        close()
    return {"per_s": sum(counts) / elapsed, "done": sum(counts), "failures": sum(failures),
            "seconds": elapsed}


def run(quick: bool, progress) -> dict:
    import nsbox

    from .latency import FloorServer, build, compiler, nsbox_kwargs, parse_ns_set

    levels = (1, 2, 8) if quick else (1, 2, 8, 64)
    seconds = 1.0 if quick else 3.0
    floor_exe = build(compiler()).get("floor")
    out: dict[str, object] = {"seconds_per_point": seconds, "levels": list(levels),
                              "how": "threads calling nsbox.run; floor --serve processes",
                              "points": {}}
    bar = progress("throughput", len(levels) * 2 * 2)
    try:
        for label in ("all", "all-but-net"):
            ns = parse_ns_set("all") - ({"net"} if label == "all-but-net" else set())
            kw = nsbox_kwargs(ns)
            points = {}
            for c in levels:
                def nsbox_once(kw=kw):
                    return (lambda: nsbox.run([TRUE], **kw)), (lambda: None)

                def floor_once(ns=ns):
                    srv = FloorServer(floor_exe, ns, TRUE)
                    return srv.once, srv.close

                a = _rate(nsbox_once, c, seconds)
                bar.step()
                b = _rate(floor_once, c, seconds) if floor_exe else None
                bar.step()
                points[c] = {"nsbox": a, "floor": b,
                             "ratio_to_floor": (a["per_s"] / b["per_s"]) if b and b["per_s"]
                             else None}
            out["points"][label] = points
    finally:
        bar.close()
    if not floor_exe:
        out["skipped"] = {"floor": "no C compiler: the floor was not built"}
    _print(out)
    return out


def _print(out: dict) -> None:
    for label, points in out["points"].items():
        print(f"\nthroughput [{label}]: sandboxes per second (start + exit + reap)")
        print(f"  {'concurrency':>11s} {'nsbox':>9s} {'floor':>9s} {'nsbox/floor':>11s}")
        for c, p in points.items():
            floor = p["floor"]["per_s"] if p["floor"] else float("nan")
            ratio = p["ratio_to_floor"]
            fails = p["nsbox"]["failures"] + (p["floor"]["failures"] if p["floor"] else 0)
            print(f"  {c:>11d} {p['nsbox']['per_s']:9.0f} {floor:9.0f} "
                  f"{(f'{ratio:.2f}x' if ratio else '-'):>11s}"
                  + (f"  ({fails} failed)" if fails else ""))
    for name, why in out.get("skipped", {}).items():
        print(f"  skipped {name}: {why}")
