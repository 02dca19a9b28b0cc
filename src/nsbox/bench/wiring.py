"""Network wiring: what joining a network adds to a start, as sandboxes pile up on it.

Sandboxes (all namespaces, a sleeper each) are started onto one network and
kept live, up to N (10, 100, 1000, 2000: past one bridge's 1024 ports). Every
fifth start is a control: the same sandbox without a network, at the same
live count, started and killed at once. Wiring cost = p50(start with
network) - p50(start without), per window of starts before each N; a start
is the Sandbox call until the command runs.
Then teardown: half the sandboxes killed while new ones keep starting (their
latency: the hub lets the ended namespaces go in batches, see _hub.Hub.pace),
then the other half with nothing starting; the time until all are reaped, and
until the hub's bridge has no port left (the veths go with their namespaces).

Beside it, in the same run: `ip -b` creating the same number of veth pairs
onto a bridge in one batch, inside a scratch net namespace (`unshare -rn`):
the kernel's cost of the interfaces alone, without a namespace per peer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

from .latency import percentile

SLEEPER = ["sleep", "1000"]
CONTROL_EVERY = 5


def _ip_batch(n: int) -> float | None:
    """Seconds per veth pair for `ip -b` making n pairs onto a bridge, or None."""
    ip, unshare = shutil.which("ip"), shutil.which("unshare")
    if not ip or not unshare:
        return None

    def timed(pairs: int) -> float:
        lines = ["link add nsbxb0 type bridge", "link set nsbxb0 up"]
        for i in range(pairs):
            a, b = divmod(i + 2, 256)
            lines += [f"link add nsbxh{i} type veth peer name nsbxp{i}",
                      f"link set nsbxh{i} master nsbxb0 up",
                      f"addr add 10.90.{a}.{b}/16 dev nsbxp{i}",
                      f"link set nsbxp{i} up"]
        with tempfile.NamedTemporaryFile("w", suffix=".ip") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            t = time.perf_counter()
            done = subprocess.run([unshare, "-rn", ip, "-b", f.name], capture_output=True)
            elapsed = time.perf_counter() - t
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode(errors="replace").strip())
        return elapsed

    try:
        base = min(timed(0) for _ in range(3))
        return max(timed(n) - base, 0.0) / n if n else None
    except (RuntimeError, OSError):
        return None


def _starts_during_teardown(net, ending: list) -> dict:
    """Kill `ending`, start `true` on `net` one after another until their veths
    are gone; the latencies of those starts. Closes `ending`."""
    import nsbox
    from nsbox import _network

    links = [box._net.host_if for box in ending]
    t = time.perf_counter()
    for box in ending:
        box.kill()
    during: list[float] = []
    reaped = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        s0 = time.perf_counter()
        nsbox.run(["true"], network=net)
        during.append(time.perf_counter() - s0)
        if reaped is None and all(box.poll() is not None for box in ending):
            reaped = time.perf_counter() - t
        if reaped is not None and len(during) % 10 == 0 and \
                not _network.status(net, links)["present"]:
            break
    gone = time.perf_counter() - t
    for box in ending:
        box.wait()
        box.close()
    d = sorted(during)
    return {"ending": len(ending), "starts": len(d), "p50_ms": percentile(d, 0.5) * 1e3,
            "p99_ms": percentile(d, 0.99) * 1e3, "max_ms": d[-1] * 1e3, "reaped_s": reaped,
            "veths_gone_s": gone}


def run(quick: bool, progress) -> dict:
    import resource

    import nsbox
    from nsbox import _network

    steps = (10, 100) if quick else (10, 100, 1000, 2000)
    # Two fds per live sandbox (pidfd, report pipe): raise the soft limit, as
    # the supervisor does.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * steps[-1] + 256 <= hard or (hard == resource.RLIM_INFINITY and soft < 8192):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))
    net = nsbox.Network(f"nsbx-bench{os.getpid()}")
    out: dict[str, object] = {"steps": {}, "ip_batch_ms_per_pair": {}}
    bar = progress("wiring", steps[-1])
    live: list = []
    with_net: list[float] = []
    without: list[float] = []
    window_start = 0
    try:
        with net:
            for n in steps:
                while len(live) < n:
                    if len(with_net) % CONTROL_EVERY == CONTROL_EVERY - 1 and \
                            len(without) * CONTROL_EVERY < len(with_net):
                        t = time.perf_counter()
                        box = nsbox.Sandbox(SLEEPER)
                        without.append(time.perf_counter() - t)
                        box.kill()
                        box.wait()
                        box.close()
                    t = time.perf_counter()
                    live.append(nsbox.Sandbox(SLEEPER, network=net))
                    with_net.append(time.perf_counter() - t)
                    bar.step()
                w = sorted(with_net[window_start:])
                c = sorted(without[window_start // CONTROL_EVERY:]) or sorted(without)
                window_start = len(with_net)
                step = {"live": n, "starts": len(w), "controls": len(c),
                        "with_network_p50_ms": percentile(w, 0.5) * 1e3,
                        "with_network_p99_ms": percentile(w, 0.99) * 1e3,
                        "without_network_p50_ms": percentile(c, 0.5) * 1e3 if c else None}
                if c:
                    step["wiring_ms"] = step["with_network_p50_ms"] - step["without_network_p50_ms"]
                out["steps"][str(n)] = step
            # Half the sandboxes end while new ones keep starting (the hub
            # takes their veths off the bridge and lets their namespaces go in
            # batches); the same beside it on a network whose hub does not pace;
            # then the rest end with nothing starting.
            half, rest = live[: len(live) // 2], live[len(live) // 2:]
            out["starts_during_teardown"] = _starts_during_teardown(net, half)
            unpaced = nsbox.Network(f"nsbx-bench-np{os.getpid()}")
            os.environ["NSBOX_HUB_TEARDOWN_BATCH"] = "0"  # read by its hub as it starts
            try:
                with unpaced:
                    os.environ.pop("NSBOX_HUB_TEARDOWN_BATCH")
                    others = []
                    try:
                        for _ in range(len(half)):
                            others.append(nsbox.Sandbox(SLEEPER, network=unpaced))
                    except BaseException:
                        for box in others:
                            box.kill()
                            box.wait()
                            box.close()
                        raise
                    out["starts_during_teardown_unpaced"] = _starts_during_teardown(unpaced,
                                                                                    others)
            finally:
                os.environ.pop("NSBOX_HUB_TEARDOWN_BATCH", None)
            live = rest
            links = [box._net.host_if for box in live]
            t = time.perf_counter()
            for box in live:
                box.kill()
            for box in live:
                box.wait()
                box.close()
            reaped = time.perf_counter() - t
            deadline = time.monotonic() + 60
            while _network.status(net, links)["present"] and time.monotonic() < deadline:
                time.sleep(0.01)
            gone = time.perf_counter() - t
            status = _network.status(net)
            out["teardown"] = {"sandboxes": len(live), "reaped_s": reaped,
                               "veths_gone_s": gone, "ports_left": status["ports"],
                               "leases_left": status["leases"]}
            live = []
    finally:
        for box in live:
            box.kill()
            box.wait()
            box.close()
        bar.close()
    for n in steps:
        per = _ip_batch(n)
        out["ip_batch_ms_per_pair"][str(n)] = per * 1e3 if per is not None else None
    out["leaked"] = bool(out.get("teardown", {}).get("ports_left") or
                         out.get("teardown", {}).get("leases_left"))
    _print(out)
    return out


def _print(out: dict) -> None:
    print("\nwiring: starts onto one network as live sandboxes pile up (p50; controls "
          "without a network at the same live count)")
    print(f"  {'live':>5s}  {'with net':>9s}  {'p99':>8s}  {'without':>8s}  {'wiring':>8s}  "
          f"{'ip -b/pair':>10s}")
    for n, s in out["steps"].items():
        ipb = out["ip_batch_ms_per_pair"].get(n)
        wiring = s.get("wiring_ms")
        print(f"  {s['live']:5d}  {s['with_network_p50_ms']:7.2f}ms  "
              f"{s['with_network_p99_ms']:6.2f}ms  "
              + (f"{s['without_network_p50_ms']:6.2f}ms  " if s["without_network_p50_ms"]
                 else "       -  ")
              + (f"{wiring:6.2f}ms  " if wiring is not None else "       -  ")
              + (f"{ipb:8.3f}ms" if ipb is not None else "    failed"))
    if any(v is None for v in out["ip_batch_ms_per_pair"].values()):
        print("  (ip -b fails past 1,024 pairs: a bridge's ports; nsbox spreads a network over "
              "several bridges)")
    for key, how in (("starts_during_teardown", "paced: off the bridge, then in batches"),
                     ("starts_during_teardown_unpaced", "a hub that does not pace: all at once")):
        sd = out.get(key)
        if sd:
            print(f"  {sd['ending']} ending while others start ({how}): {sd['starts']} starts "
                  f"meanwhile, p50 {sd['p50_ms']:.1f} ms, p99 {sd['p99_ms']:.1f} ms, max "
                  f"{sd['max_ms']:.0f} ms; reaped in {sd['reaped_s'] or 0:.2f} s, veths gone in "
                  f"{sd['veths_gone_s']:.2f} s")
    td = out.get("teardown")
    if td:
        print(f"  teardown of {td['sandboxes']} (nothing starting): all reaped in "
              f"{td['reaped_s']:.2f} s, every veth gone in {td['veths_gone_s']:.2f} s; "
              f"left: {td['ports_left']} ports, {td['leases_left']} leases")
