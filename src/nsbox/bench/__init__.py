"""nsbox's benchmark suite: `python -m nsbox bench [--quick] [--json F] [--plot F] [which...]`.

Parts (`which`; default all):
  latency     start-to-exit of /bin/true: the C floor, nsbox, unshare(1), bwrap... interleaved
  phases      where nsbox's time goes: the C core's phase timestamps, per namespace set
  warm        through the trio supervisor: from a warm pool and cold, beside nsbox.run and the floor
  throughput  start+exit+reap per second at several concurrencies, against the C floor
  scale       sandboxes held live in steps: memory per sandbox, start latency, teardown
  wiring      joining a network: cost per start as sandboxes pile up on it, teardown, ip -b

Every part measures its variants side by side in one run; quote ratios (the
machine is shared and noisy). --quick runs everything in well under a minute
(the CI smoke test: it asserts nothing about the numbers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("latency", "phases", "warm", "throughput", "scale", "wiring")

__all__ = ["main", "PARTS"]


class Progress:
    """One status line on stderr (only on a terminal): `part: done/total`."""

    def __init__(self, part: str, total: int):
        self.part, self.total, self.done = part, total, 0
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and (now - self.last > 0.1 or self.done >= self.total):
            self.last = now
            width = 30
            filled = int(width * min(self.done / max(self.total, 1), 1.0))
            sys.stderr.write(f"\r  {self.part}: [{'#' * filled}{'.' * (width - filled)}] "
                             f"{self.done}/{self.total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one `nsbox: ...` line and 125, as `run` does
        sys.stderr.write(f"nsbox: bench: {message}\n")
        raise SystemExit(125)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = _Parser(
        prog="python -m nsbox bench",
        description="nsbox's benchmark suite: each part side by side with its baselines, "
                    "in one run.",
        epilog="parts: latency (vs the C floor, unshare, bwrap...), phases (where the time "
               "goes), warm (a warm pool against cold starts), throughput (sandboxes/s by "
               "concurrency), scale (live sandboxes, memory, teardown), wiring (joining a "
               "network, against ip -b)",
    )
    p.add_argument("which", nargs="*", choices=[*PARTS, []], metavar="PART",
                   help=f"parts to run: {', '.join(PARTS)} (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="small counts: everything in well under a minute (CI's smoke test)")
    p.add_argument("--json", metavar="FILE", help="write every figure, the machine and the "
                   "parameters as JSON to FILE")
    p.add_argument("--plot", metavar="FILE", help="draw latency and throughput to FILE (.png, "
                   ".svg...); needs matplotlib: pip install 'nsbox[bench]'")
    return p.parse_args(argv)


def _latency(quick: bool) -> dict:
    from . import latency

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = (["-n", "40", "--warmup", "5", "--ns-sets", "all,none", "--max-seconds", "15"]
                if quick else
                ["-n", "300", "--ns-sets", "all,none,user,user+mnt+pid+uts+ipc"])
        variants = list(latency.DEFAULT_VARIANTS) + ["limits"]
        rc = latency.main([*argv, "--variants", ",".join(variants), "--json", out.name])
        report = json.loads(Path(out.name).read_text())
    report["exit_status"] = rc
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    which = list(dict.fromkeys(args.which)) or list(PARTS)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("nsbox: --plot needs matplotlib: pip install 'nsbox[bench]'", file=sys.stderr)
            return 125
    from .latency import machine_info

    started = dt.datetime.now().astimezone()
    t0 = time.monotonic()
    results: dict[str, object] = {}
    status = 0
    for part in which:
        print(f"\n=== {part}", flush=True)
        if part == "latency":
            results[part] = _latency(args.quick)
            status |= results[part]["exit_status"]
        elif part == "phases":
            from . import phases

            results[part] = phases.run(args.quick, Progress)
        elif part == "warm":
            from . import warm

            results[part] = warm.run(args.quick, Progress)
        elif part == "throughput":
            from . import throughput

            results[part] = throughput.run(args.quick, Progress)
        elif part == "scale":
            from . import scale

            results[part] = scale.run(args.quick, Progress)
            status |= 1 if results[part].get("leaked") else 0
        elif part == "wiring":
            from . import wiring

            results[part] = wiring.run(args.quick, Progress)
            status |= 1 if results[part].get("leaked") else 0
    report = {
        "tool": "python -m nsbox bench",
        "schema": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - t0, 3),
        "machine": machine_info(),
        "parameters": {"quick": args.quick, "which": which, "argv": sys.argv},
        "results": results,
    }
    print(f"\nnsbox bench: {', '.join(which)} in {report['duration_s']:.1f} s; quote ratios, "
          "not absolute times (shared, noisy machine)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"results: {args.json}")
    if args.plot:
        from .plot import plot

        plot(report, args.plot)
        print(f"plot: {args.plot}")
    return status


def our_children() -> int:
    """How many child processes this process has (a leak check)."""
    me = str(os.getpid())
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[1] == me:
                    n += 1
        except OSError:
            pass
    return n
