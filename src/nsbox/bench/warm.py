"""Cold against warm: start-to-exit of /bin/true through the trio supervisor,
from a warm pool and cold, beside the sync nsbox.run and the C floor, in one
run, interleaved (each round runs each once, in a shuffled order, after the
pool has refilled, so no refill runs alongside a measurement).
"""

from __future__ import annotations

import random
import time

from .latency import percentile

TRUE = "/bin/true"


def run(quick: bool, progress) -> dict:
    import trio

    import nsbox

    from .latency import FloorServer, build, compiler, nsbox_kwargs, parse_ns_set

    rounds = 30 if quick else 200
    floor_exe = build(compiler()).get("floor")
    out: dict[str, object] = {"rounds": rounds, "sets": {}}
    bar = progress("warm", rounds * 2)

    async def measure(label: str) -> dict:
        ns = parse_ns_set("all") - ({"net"} if label == "all-but-net" else set())
        kw = nsbox_kwargs(ns)
        samples: dict[str, list[float]] = {"floor": [], "nsbox.run": [], "supervisor cold": [],
                                           "supervisor warm": []}
        floor = FloorServer(floor_exe, ns, TRUE) if floor_exe else None
        try:
            async with nsbox.open_supervisor() as sup:
                pool = sup.pool([TRUE], size=2, **kw)
                cold_kw = {**kw, "hostname": "cold"}  # not the pool's spec: starts cold

                async def warm_once():
                    await sup.run([TRUE], **kw)

                async def cold_once():
                    await sup.run([TRUE], **cold_kw)

                for _ in range(rounds):
                    order = list(samples)
                    random.shuffle(order)
                    for name in order:
                        # Every variant runs with the pool full and no refill
                        # under way (a refill starts a little after a take).
                        with trio.fail_after(30):
                            while pool.ready < pool.size:
                                await trio.sleep(0.002)
                        if name == "floor":
                            if floor is not None:
                                samples[name].append(floor.once() / 1e9)
                            continue
                        t = time.perf_counter()
                        if name == "nsbox.run":
                            nsbox.run([TRUE], **kw)
                        elif name == "supervisor cold":
                            await cold_once()
                        else:
                            await warm_once()
                        samples[name].append(time.perf_counter() - t)
                    bar.step()
                taken = pool.taken
        finally:
            if floor is not None:
                floor.close()
        res = {name: {"p50_ms": percentile(sorted(v), 0.5) * 1e3,
                      "p95_ms": percentile(sorted(v), 0.95) * 1e3, "n": len(v)}
               for name, v in samples.items() if v}
        if "floor" in res:
            for r in res.values():
                r["ratio_to_floor"] = r["p50_ms"] / res["floor"]["p50_ms"]
        res["warm_slots_taken"] = taken
        return res

    async def main():
        for label in ("all", "all-but-net"):
            out["sets"][label] = await measure(label)

    try:
        trio.run(main)
    finally:
        bar.close()
    _print(out)
    return out


def _print(out: dict) -> None:
    for label, res in out["sets"].items():
        print(f"\nwarm [{label}]: start to exit of /bin/true, interleaved")
        for name, r in res.items():
            if not isinstance(r, dict):
                continue
            ratio = r.get("ratio_to_floor")
            print(f"  {name:16s} p50 {r['p50_ms']:6.2f} ms  p95 {r['p95_ms']:6.2f} ms"
                  + (f"  {ratio:.2f}x floor" if ratio else ""))
