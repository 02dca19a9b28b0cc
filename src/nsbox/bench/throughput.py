"""Throughput: sandboxes of /bin/true started, exited and reaped per second at
several concurrencies, with and without a network namespace, against the C
floor doing the same clones at the same concurrency, alternating.

nsbox runs two ways: `concurrency` threads calling nsbox.run in a loop, and
`concurrency` trio tasks awaiting sup.run under one supervisor; the floor as
that many `floor --serve` processes, each driven by a thread.
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


def _supervisor_rate(kw: dict, concurrency: int, seconds: float) -> dict:
    """Completions per second of `concurrency` trio tasks each awaiting sup.run in a loop."""
    import trio

    import nsbox

    counts = [0]
    failures = [0]

    async def main():
        async with nsbox.open_supervisor() as sup:
            deadline = trio.current_time() + seconds

            async def worker():
                while trio.current_time() < deadline:
                    try:
                        await sup.run([TRUE], **kw)
                        counts[0] += 1
                    except Exception:  # noqa: BLE001 - counted, reported
                        failures[0] += 1

            t0 = trio.current_time()
            async with trio.open_nursery() as n:
                for _ in range(concurrency):
                    n.start_soon(worker)
            return trio.current_time() - t0

    elapsed = trio.run(main)
    return {"per_s": counts[0] / elapsed, "done": counts[0], "failures": failures[0],
            "seconds": elapsed}


def run(quick: bool, progress) -> dict:
    import nsbox

    from .latency import FloorServer, build, compiler, nsbox_kwargs, parse_ns_set

    levels = (1, 2, 8) if quick else (1, 2, 8, 64)
    seconds = 1.0 if quick else 3.0
    floor_exe = build(compiler()).get("floor")
    out: dict[str, object] = {"seconds_per_point": seconds, "levels": list(levels),
                              "how": "threads calling nsbox.run; trio tasks awaiting sup.run; "
                                     "floor --serve processes",
                              "points": {}}
    bar = progress("throughput", len(levels) * 2 * 3)
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
                sv = _supervisor_rate(kw, c, seconds)
                bar.step()
                b = _rate(floor_once, c, seconds) if floor_exe else None
                bar.step()
                points[c] = {"nsbox": a, "supervisor": sv, "floor": b,
                             "ratio_to_floor": (a["per_s"] / b["per_s"]) if b and b["per_s"]
                             else None,
                             "supervisor_ratio_to_floor": (sv["per_s"] / b["per_s"])
                             if b and b["per_s"] else None}
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
        print(f"  {'concurrency':>11s} {'threads':>9s} {'trio sup':>9s} {'floor':>9s} "
              f"{'threads/floor':>13s} {'sup/floor':>9s}")
        for c, p in points.items():
            floor = p["floor"]["per_s"] if p["floor"] else float("nan")
            ratio, sratio = p["ratio_to_floor"], p["supervisor_ratio_to_floor"]
            fails = (p["nsbox"]["failures"] + p["supervisor"]["failures"]
                     + (p["floor"]["failures"] if p["floor"] else 0))
            print(f"  {c:>11d} {p['nsbox']['per_s']:9.0f} {p['supervisor']['per_s']:9.0f} "
                  f"{floor:9.0f} {(f'{ratio:.2f}x' if ratio else '-'):>13s} "
                  f"{(f'{sratio:.2f}x' if sratio else '-'):>9s}"
                  + (f"  ({fails} failed)" if fails else ""))
    for name, why in out.get("skipped", {}).items():
        print(f"  skipped {name}: {why}")
