"""Spawn latency of nsbox against a C floor, unshare(1), bwrap and plain fork/exec.

Every variant runs /bin/true (or a static no-libc `true`) and is timed from
"start" to "exited and reaped". All variants are measured in the same run,
interleaved: each round runs every variant once, in a freshly shuffled order,
so machine noise lands on all of them alike. See benchmarks/README.md.

    python benchmarks/spawn_latency.py                       # default: -n 300, ns=all
    python benchmarks/spawn_latency.py --ns-sets all,none,user,user+mnt+pid+uts+ipc
    python benchmarks/spawn_latency.py --compare-ballast 500 # nsbox/fork with 0 vs 500 MB
    python benchmarks/spawn_latency.py --cli                 # python -m nsbox run vs python
    python benchmarks/spawn_latency.py --smoke               # a few seconds, for CI

Exit status: 0, or 1 when any measured run failed (targets never fail it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLOOR_SRC = HERE / "floor.c"


def _cache_dir() -> Path:
    """Where the compiled floor and static true go: the user's cache, else a
    directory of ours under the temporary directory."""
    env = os.environ.get("NSBOX_BENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if os.access(os.path.dirname(base.rstrip("/")) or "/", os.W_OK) or os.path.isdir(base):
        return Path(base) / "nsbox-bench"
    import tempfile

    return Path(tempfile.gettempdir()) / f"nsbx-bench-{os.getuid()}"


BUILD = _cache_dir()
RESULTS = Path.cwd() / "nsbox-bench-results"  # (benchmarks/spawn_latency.py: benchmarks/results)
TRUE = "/bin/true"

ALL_NS = ("user", "mount", "pid", "uts", "ipc", "net", "cgroup")
NS_ALIASES = {"mnt": "mount", "cgroups": "cgroup", "network": "net"}

# Targets printed next to the results (informational: they never set the exit status).
TARGET_FLOOR_RATIO = 1.30  # nsbox p50 <= 1.3x the floor's p50 (same namespaces)
TARGET_BALLAST_RATIO = 1.10  # nsbox p50 with the ballast within 10% of without
TARGET_CLI_MS = 15.0  # python -m nsbox run: at most +15 ms over python -c pass
TARGET_LIMITS_RATIO = 1.50  # nsbox with a memory+pids cgroup <= 1.5x nsbox without
LIMITS = {"memory": "256M", "pids": 64}

NS_VARIANTS = ("floor", "floor-static", "nsbox", "nsbox-static", "unshare", "bwrap", "runc",
               "crun")
PLAIN_VARIANTS = ("subprocess", "fork")
DEFAULT_VARIANTS = NS_VARIANTS + PLAIN_VARIANTS
# Peers that leave something in the host's namespace after they ran (firejail
# mounts /run/firejail/* there, systemd-nspawn makes /run/systemd/nspawn*): only
# when asked for by name.
ON_REQUEST = ("firejail", "systemd-nspawn")
GROUPS = {
    "ballast": "nsbox+0MB, nsbox+<N>MB, fork+0MB, fork+<N>MB (needs --compare-ballast)",
    "cli": "cli-nsbox, cli-pass, cli-import (same as --cli)",
    "limits": f"nsbox-limits: nsbox with limits={LIMITS} (a cgroup per sandbox; needs root "
              "on cgroup v1, or a delegated cgroup v2 subtree)",
}
KNOWN_VARIANTS = DEFAULT_VARIANTS + ON_REQUEST + tuple(GROUPS)

STATIC_TRUE_SRC = r"""
/* true without libc: _start makes the exit(0) syscall. */
void _start(void)
{
#if defined(__x86_64__)
    __asm__ volatile("mov $60, %%eax\n\txor %%edi, %%edi\n\tsyscall" ::: "memory");
#elif defined(__aarch64__)
    __asm__ volatile("mov x0, #0\n\tmov x8, #93\n\tsvc #0" ::: "memory");
#elif defined(__riscv)
    __asm__ volatile("li a0, 0\n\tli a7, 93\n\tecall" ::: "memory");
#else
#error "no exit syscall for this architecture"
#endif
    for (;;) {
    }
}
"""


# Other tools, driven by bench/peers.py when they run here (all namespace set only).
PEERS = {"crun": "crun", "runc": "runc", "firejail": "firejail",
         "systemd-nspawn": "systemd-container"}


class Failure(Exception):
    """One run of a variant failed; its sample is not counted."""


# -- namespace sets -----------------------------------------------------------


def parse_ns_set(label: str) -> frozenset[str]:
    """'all', 'none', or names joined by '+' or ',' (user+mnt+pid+uts+ipc)."""
    label = label.strip()
    if label == "all":
        return frozenset(ALL_NS)
    if label in ("none", ""):
        return frozenset()
    names = set()
    for raw in label.replace(",", "+").split("+"):
        name = NS_ALIASES.get(raw, raw)
        if name not in ALL_NS:
            raise argparse.ArgumentTypeError(
                f"unknown namespace {raw!r} in {label!r} (known: {', '.join(ALL_NS)}, mnt)"
            )
        names.add(name)
    return frozenset(names)


def nsbox_kwargs(ns: frozenset[str]) -> dict:
    """nsbox.run options for a namespace set; all seven is the plain default call."""
    if ns == frozenset(ALL_NS):
        return {}
    return {"namespaces": sorted(ns), "network": "none" if "net" in ns else "host"}


def floor_ns_arg(ns: frozenset[str]) -> str:
    return "+".join(n for n in ALL_NS if n in ns) or "none"


def unshare_argv(ns: frozenset[str]) -> list[str]:
    flags = {
        "user": ["--user", "--map-root-user"],
        "mount": ["--mount"],
        "pid": ["--pid", "--fork"],
        "uts": ["--uts"],
        "ipc": ["--ipc"],
        "net": ["--net"],
        "cgroup": ["--cgroup"],
    }
    argv = ["unshare"]
    for name in ALL_NS:
        if name in ns:
            argv += flags[name]
    return argv + ["true"]


def bwrap_argv(ns: frozenset[str]) -> list[str] | None:
    """bwrap's command for a set, or None when bwrap cannot match it."""
    common = ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"]
    if ns == frozenset(ALL_NS):
        return ["bwrap", "--unshare-all"] + common
    if not {"mount", "pid"} <= ns:
        return None  # bwrap always makes a mount ns, and --proc wants a pid ns
    argv = ["bwrap"]
    for name in ("user", "ipc", "pid", "net", "uts", "cgroup"):
        if name in ns:
            argv.append(f"--unshare-{name}")
    return argv + common


# -- building the C helpers ---------------------------------------------------


def compiler() -> str | None:
    cc = os.environ.get("CC", "cc")
    return shutil.which(cc)


def build(cc: str | None) -> dict:
    """Compile floor and the static true into .build/ when missing or stale.

    Returns {"floor": path or None, "true-static": path or None, "errors": {...}}.
    Each binary is written under a temporary name and renamed into place, so
    concurrent invocations never run a half-written file.
    """
    BUILD.mkdir(parents=True, exist_ok=True)
    out: dict = {"floor": None, "true-static": None}
    errors: dict[str, str] = {}
    static_src = BUILD / "true-static.c"
    if not static_src.exists() or static_src.read_text() != STATIC_TRUE_SRC:
        tmp = BUILD / f"true-static.c.{os.getpid()}"
        tmp.write_text(STATIC_TRUE_SRC)
        os.replace(tmp, static_src)
    jobs = {
        "floor": (FLOOR_SRC, BUILD / "floor", ["-O2", "-Wall"]),
        "true-static": (
            static_src,
            BUILD / "true-static",
            ["-O2", "-static", "-nostdlib", "-fno-stack-protector", "-no-pie"],
        ),
    }
    for name, (src, exe, flags) in jobs.items():
        # Stale by content, not mtime: checkouts of different versions share
        # the cache, and an older source compiled later must not pass for new.
        text = src.read_bytes()
        built_from = exe.with_name(f"{exe.name}.built-from")
        if exe.exists() and built_from.exists() and built_from.read_bytes() == text:
            out[name] = str(exe)
            continue
        if cc is None:
            errors[name] = "no C compiler (cc or $CC) found"
            continue
        tmp = exe.with_name(f"{exe.name}.{os.getpid()}")
        r = subprocess.run([cc, *flags, "-o", str(tmp), str(src)], capture_output=True, text=True)
        if r.returncode == 0:
            tmp_src = built_from.with_name(f"{built_from.name}.{os.getpid()}")
            tmp_src.write_bytes(text)
            os.replace(tmp, exe)
            os.replace(tmp_src, built_from)
            out[name] = str(exe)
        else:
            tmp.unlink(missing_ok=True)
            errors[name] = f"{cc} failed: {r.stderr.strip()[-500:]}"
    out["errors"] = errors
    return out


# -- things that run once and return elapsed ns -------------------------------


def nsbox_once(argv: list[str], kwargs: dict) -> Callable[[], int]:
    import nsbox

    def once() -> int:
        t0 = time.perf_counter_ns()
        r = nsbox.run(argv, **kwargs)
        elapsed = time.perf_counter_ns() - t0
        if r.returncode != 0:
            raise Failure(f"returncode {r.returncode}")
        return elapsed

    return once


def subprocess_once(
    argv: list[str], env: dict[str, str] | None = None, timeout: float = 60.0
) -> Callable[[], int]:
    def once() -> int:
        t0 = time.perf_counter_ns()
        r = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            timeout=timeout,
        )
        elapsed = time.perf_counter_ns() - t0
        if r.returncode != 0:
            err = r.stderr.decode(errors="replace").strip().splitlines()
            raise Failure(f"exit {r.returncode}: {err[-1] if err else ''}")
        return elapsed

    return once


def peer_once(make: Callable[[], list[str]]) -> Callable[[], int]:
    """subprocess_once with a fresh argv each run (a new container id)."""
    def once() -> int:
        return subprocess_once(make())()

    return once


def fork_once(path: str = TRUE) -> Callable[[], int]:
    def once() -> int:
        t0 = time.perf_counter_ns()
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.execv(path, [path])
            finally:
                os._exit(127)
        _, status = os.waitpid(pid, 0)
        elapsed = time.perf_counter_ns() - t0
        if status != 0:
            raise Failure(f"wait status {status}")
        return elapsed

    return once


class FloorServer:
    """benchmarks/.build/floor --serve: one clone+exec+wait per request, timed in C."""

    def __init__(self, exe: str, ns: frozenset[str], prog: str):
        self.argv = [exe, "--ns", floor_ns_arg(ns), "--serve", prog]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def once(self) -> int:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(b"1\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        if not line:
            raise Failure(f"floor exited ({self.proc.poll()})")
        if line.startswith(b"fail"):
            raise Failure(line.decode())
        return int(line)

    def close(self) -> None:
        stop_child(self.proc)


class Worker:
    """A child Python (this script, --_worker) holding a ballast; runs nsbox/fork on request.

    The request/reply round trip is outside the timed region: the worker times
    each run itself with perf_counter_ns, exactly like the in-process variants.
    """

    def __init__(self, ballast_mb: int):
        self.ballast_mb = ballast_mb
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--_worker",
            "--ballast-mb",
            str(ballast_mb),
        ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        hello = self._read()
        if not hello.startswith("ready"):
            stop_child(self.proc)
            raise RuntimeError(f"worker ({ballast_mb} MB) did not start: {hello!r}")
        self.rss_after_ballast_mb = int(hello.split()[1]) / 1024

    def _read(self) -> str:
        assert self.proc.stdout
        return self.proc.stdout.readline().decode().strip()

    def request(self, line: str) -> str:
        assert self.proc.stdin
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        reply = self._read()
        if not reply:
            raise Failure(f"worker exited ({self.proc.poll()})")
        return reply

    def runner(self, kind: str, ns_label: str) -> Callable[[], int]:
        def once() -> int:
            reply = self.request(f"run {kind} {ns_label}")
            status, _, rest = reply.partition(" ")
            if status != "ok":
                raise Failure(rest)
            return int(rest)

        return once

    def peak_rss_mb(self) -> float | None:
        try:
            return int(self.request("rss").split()[1]) / 1024
        except (Failure, OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        stop_child(self.proc)


def stop_child(proc: subprocess.Popen) -> None:
    """Close a helper's stdin (it exits at EOF); kill it by pid only if it does not."""
    try:
        if proc.stdin:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


def worker_main(ballast_mb: int) -> int:
    """--_worker: hold the ballast, then serve 'run <kind> <ns>' and 'rss' requests."""
    # Keep the protocol pipes away from the runs' stdio (and close-on-exec).
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    ballast = make_ballast(ballast_mb)  # noqa: F841 - held for the process lifetime
    gc.disable()
    runners: dict[tuple[str, str], Callable[[], int]] = {}

    def reply(text: str) -> None:
        proto_out.write(text.replace("\n", " ").encode() + b"\n")

    reply(f"ready {current_rss_kb()}")
    for raw in proto_in:
        words = raw.decode().split()
        if not words:
            continue
        if words[0] == "rss":
            reply(f"rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
            continue
        if words[0] != "run" or len(words) != 3:
            reply(f"fail bad request {raw!r}")
            continue
        key = (words[1], words[2])
        try:
            if key not in runners:
                if key[0] == "nsbox":
                    runners[key] = nsbox_once([TRUE], nsbox_kwargs(parse_ns_set(key[1])))
                elif key[0] == "fork":
                    runners[key] = fork_once()
                else:
                    raise Failure(f"unknown kind {key[0]}")
            reply(f"ok {runners[key]()}")
        except Exception as e:  # noqa: BLE001 - reported to the parent as a failure
            reply(f"fail {type(e).__name__}: {e}")
    return 0


# -- ballast and memory ------------------------------------------------------


def make_ballast(mb: int) -> bytearray | None:
    """N MB allocated and touched (one write per page), so it is resident."""
    if mb <= 0:
        return None
    ballast = bytearray(mb << 20)
    page = os.sysconf("SC_PAGE_SIZE")
    ballast[::page] = b"\x01" * len(range(0, len(ballast), page))
    return ballast


def current_rss_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- the variants --------------------------------------------------------------


@dataclass
class Variant:
    name: str  # e.g. "nsbox", "nsbox+500MB"
    ns: str | None  # namespace-set label; None when the variant does not depend on it
    what: str  # what one run is, for the JSON and README
    once: Callable[[], int]
    floor: str | None = None  # name of the floor variant to divide by (same ns)
    samples: list[int] = field(default_factory=list)
    failures: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.name if self.ns is None else f"{self.name}[{self.ns}]"

    def run(self, record: bool) -> None:
        try:
            elapsed = self.once()
        except Exception as e:  # noqa: BLE001 - any error is a failed run, counted
            if record:
                self.failures += 1
                if len(self.messages) < 5:
                    self.messages.append(f"{type(e).__name__}: {e}")
            return
        if record:
            self.samples.append(elapsed)


def make_variants(
    args, tools: dict, skipped: dict[str, str], closers: list[Callable[[], None]]
) -> list[Variant]:
    wanted = set(args.variant_list)
    out: list[Variant] = []
    floor_exe, static_true = tools.get("floor"), tools.get("true-static")
    build_errors = "; ".join(dict.fromkeys(tools["errors"].values())) or "?"
    have_nsbox = True
    try:
        import nsbox  # noqa: F401
    except Exception as e:  # noqa: BLE001
        have_nsbox = False
        skipped["nsbox*"] = f"import nsbox failed: {e}"

    def skip(name: str, why: str) -> None:
        skipped.setdefault(name, why)

    for label in args.ns_sets:
        ns = parse_ns_set(label)
        if "floor" in wanted:
            if floor_exe:
                srv = FloorServer(floor_exe, ns, TRUE)
                closers.append(srv.close)
                out.append(Variant("floor", label, " ".join(srv.argv) + " (timed in C)", srv.once))
            else:
                skip("floor", tools["errors"].get("floor", "?"))
        if "floor-static" in wanted:
            if floor_exe and static_true:
                srv = FloorServer(floor_exe, ns, static_true)
                closers.append(srv.close)
                out.append(
                    Variant("floor-static", label, " ".join(srv.argv) + " (timed in C)", srv.once)
                )
            else:
                skip(
                    "floor-static",
                    "floor or static true not built: " + build_errors,
                )
        if "nsbox" in wanted and have_nsbox:
            kw = nsbox_kwargs(ns)
            out.append(
                Variant(
                    "nsbox",
                    label,
                    f"nsbox.run([{TRUE!r}], **{kw!r})",
                    nsbox_once([TRUE], kw),
                    floor="floor",
                )
            )
        if "nsbox-static" in wanted and have_nsbox:
            if static_true and not ("mount" in ns and static_true.startswith(("/tmp/", "/dev/"))):
                kw = nsbox_kwargs(ns)
                out.append(
                    Variant(
                        "nsbox-static",
                        label,
                        f"nsbox.run([{static_true!r}], **{kw!r})",
                        nsbox_once([static_true], kw),
                        floor="floor-static",
                    )
                )
            elif static_true and "mount" in ns and static_true.startswith(("/tmp/", "/dev/")):
                skip(
                    f"nsbox-static[{label}]",
                    f"{static_true} is hidden in the sandbox (its default filesystem mounts a "
                    "fresh /tmp and /dev): run from a checkout outside /tmp",
                )
            else:
                skip("nsbox-static", "static true not built: " + build_errors)
        if "unshare" in wanted:
            if shutil.which("unshare"):
                argv = unshare_argv(ns)
                out.append(
                    Variant(
                        "unshare",
                        label,
                        f"subprocess.run({argv!r})",
                        subprocess_once(argv),
                        floor="floor",
                    )
                )
            else:
                skip("unshare", "unshare(1) not found")
        if "bwrap" in wanted:
            argv = bwrap_argv(ns)
            if not shutil.which("bwrap"):
                skip("bwrap", "bwrap not installed (Debian: apt-get install bubblewrap)")
            elif argv is None:
                skip(
                    f"bwrap[{label}]",
                    "bwrap always creates a mount namespace and needs a "
                    "pid namespace for --proc: no matching command for this set",
                )
            else:
                out.append(
                    Variant(
                        "bwrap",
                        label,
                        f"subprocess.run({argv!r})",
                        subprocess_once(argv),
                        floor="floor",
                    )
                )
        if "limits" in wanted and have_nsbox:
            import nsbox

            kw = {**nsbox_kwargs(ns), "limits": nsbox.Limits(**LIMITS)}
            try:
                nsbox.run([TRUE], **kw)
            except nsbox.NsboxError as e:
                skip("nsbox-limits", f"cgroup limits unavailable here: {e}")
            else:
                out.append(
                    Variant(
                        "nsbox-limits",
                        label,
                        f"nsbox.run([{TRUE!r}], **{nsbox_kwargs(ns)!r}, "
                        f"limits=nsbox.Limits(**{LIMITS!r}))",
                        nsbox_once([TRUE], kw),
                        floor="nsbox",
                    )
                )
        if "ballast" in wanted and have_nsbox:
            for mb, worker in args.workers:
                out.append(
                    Variant(
                        f"nsbox+{mb}MB",
                        label,
                        f"nsbox.run([{TRUE!r}], **{nsbox_kwargs(ns)!r}) in a worker "
                        f"Python holding {mb} MB",
                        worker.runner("nsbox", label),
                        floor="floor",
                    )
                )

    for peer in ON_REQUEST:
        if peer not in wanted:
            skip(peer, f"only when asked for (--variants ...,{peer}): it leaves "
                       + ("its /run/firejail mounts in the host's namespace"
                          if peer == "firejail" else "/run/systemd/nspawn* behind"))
    if wanted & set(PEERS):
        from . import peers

        all_label = next((label for label in args.ns_sets
                          if parse_ns_set(label) == frozenset(ALL_NS)), None)
        for peer, how in peers.commands(BUILD).items():
            if peer not in wanted:
                continue
            if isinstance(how, str):
                skip(peer, how)
                continue
            if all_label is None:
                skip(peer, "measured with the `all` namespace set only")
                continue
            make, what = how
            try:
                subprocess_once(make())()  # a probe run
            except (Failure, OSError, subprocess.TimeoutExpired) as e:
                skip(peer, f"does not run here: {e}")
                continue
            out.append(Variant(peer, all_label, what, peer_once(make), floor="floor"))

    if "subprocess" in wanted:
        out.append(
            Variant("subprocess", None, "subprocess.run(['true'])", subprocess_once(["true"]))
        )
    if "fork" in wanted:
        out.append(
            Variant("fork", None, f"os.fork() + os.execv({TRUE!r}) + os.waitpid", fork_once())
        )
    if "ballast" in wanted:
        for mb, worker in args.workers:
            out.append(
                Variant(
                    f"fork+{mb}MB",
                    None,
                    f"os.fork() + os.execv({TRUE!r}) + os.waitpid in a worker "
                    f"Python holding {mb} MB",
                    worker.runner("fork", "none"),
                )
            )
    if "cli" in wanted:
        py = sys.executable
        env = cli_env(args.cli_pyc)
        for name, argv in (
            ("cli-nsbox", [py, "-m", "nsbox", "run", "--", TRUE]),
            ("cli-pass", [py, "-c", "pass"]),
            ("cli-import", [py, "-c", "import nsbox"]),
        ):
            out.append(Variant(name, None, f"subprocess.run({argv!r})", subprocess_once(argv, env)))
    return out


def cli_env(mode: str) -> dict[str, str] | None:
    """The CLI runs' environment: 'cache' lets them read and write bytecode (in .build/)."""
    if mode == "env":
        return None
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(BUILD / "pycache")
    return env


# -- statistics ----------------------------------------------------------------


def percentile(sorted_xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_xs:
        return float("nan")
    k = (len(sorted_xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def summarize(v: Variant) -> dict:
    ms = sorted(x / 1e6 for x in v.samples)
    d: dict = {
        "name": v.name,
        "ns": v.ns,
        "what": v.what,
        "n": len(ms),
        "failures": v.failures,
        "failure_messages": v.messages,
    }
    if ms:
        mean = statistics.fmean(ms)
        d |= {
            "p50_ms": percentile(ms, 0.50),
            "p95_ms": percentile(ms, 0.95),
            "p99_ms": percentile(ms, 0.99),
            "mean_ms": mean,
            "min_ms": ms[0],
            "max_ms": ms[-1],
            "stdev_ms": statistics.stdev(ms) if len(ms) > 1 else 0.0,
            "throughput_per_s": 1000.0 / mean if mean > 0 else None,
        }
    d["samples_ms"] = [round(x / 1e6, 4) for x in v.samples]  # in run order
    return d


def bootstrap_ci(
    a: list[int],
    b: list[int],
    stat: Callable[[float, float], float],
    rng: random.Random,
    iters: int = 1000,
) -> tuple[float, float] | None:
    """95% bootstrap interval of stat(median(a), median(b))."""
    if len(a) < 5 or len(b) < 5:
        return None
    vals = sorted(
        stat(
            statistics.median(rng.choices(a, k=len(a))), statistics.median(rng.choices(b, k=len(b)))
        )
        for _ in range(iters)
    )
    return percentile(vals, 0.025), percentile(vals, 0.975)


# -- machine -------------------------------------------------------------------


def _git(where: str, *args: str) -> str | None:
    """git's one-line answer, or None (no git, not a checkout)."""
    try:
        r = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def first_line(argv: list[str]) -> str | None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (r.stdout or r.stderr).strip()
    return text.splitlines()[0] if text else None


def read_first(path: str, prefix: str = "") -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip() if prefix else line.strip()
    except OSError:
        pass
    return None


def machine_info() -> dict:
    u = platform.uname()
    info = {
        "kernel": u.release,
        "kernel_version": u.version,
        "arch": u.machine,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": read_first("/proc/cpuinfo", "model name"),
        "mem_total": read_first("/proc/meminfo", "MemTotal"),
        "transparent_hugepage": read_first("/sys/kernel/mm/transparent_hugepage/enabled"),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "euid": os.geteuid(),
        "loadavg_start": os.getloadavg(),
        "bwrap": first_line(["bwrap", "--version"]) if shutil.which("bwrap") else None,
        "unshare": first_line(["unshare", "--version"]) if shutil.which("unshare") else None,
        "cc": first_line([compiler() or "cc", "--version"]) if compiler() else None,
    }
    try:
        import nsbox

        info["nsbox_version"] = nsbox.__version__
        from nsbox import _cgroup

        host = _cgroup.host()
        v2 = sorted(host.v2_controllers(host.v2.mountpoint)) if host.v2 else None
        info["cgroup"] = {"v1_controllers": sorted(host.v1), "v2_controllers": v2,
                          "mode": "v2" if host.v2 and not host.v1 else
                          ("hybrid" if host.v2 else "v1") if host.v1 or host.v2 else None}
    except Exception:  # noqa: BLE001
        info.setdefault("nsbox_version", None)
    # The commit, when nsbox runs from a checkout (an editable install).
    top = _git(str(HERE), "rev-parse", "--show-toplevel")
    info["git_commit"] = top and _git(top, "rev-parse", "HEAD")
    dirty = None
    if top:
        res = subprocess.run(["git", "-C", top, "status", "--porcelain", "--", "csrc", "src/nsbox"],
                             capture_output=True, text=True)
        dirty = bool(res.stdout.strip()) if res.returncode == 0 else None
    info["git_dirty_nsbox_sources"] = dirty
    return info


def cpu_times() -> tuple[float, float, float, float, float] | None:
    """(machine user s, machine system s, our user s, our system s, monotonic s).

    "Our" includes every child we reaped (and what they reaped), so it covers
    the sandboxes, the floor, the workers and the tools we ran.
    """
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user = (v[0] + v[1]) / hz  # user + nice (guest time is inside user)
    system = (v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / hz  # sys, irq, softirq, steal
    own_user = own_sys = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        own_user += ru.ru_utime
        own_sys += ru.ru_stime
    return user, system, own_user, own_sys, time.monotonic()


def other_cpu_share(mark: tuple | None) -> dict[str, float] | None:
    """Shares of all usable CPUs used since mark by others: {"user": .., "system": ..}.

    "system" also holds kernel work that our runs cause asynchronously (network
    and mount namespace tear-down in kworkers, bwrap's in particular), so only
    "user" says whether another program was competing with us.
    """
    now = cpu_times()
    if mark is None or now is None or now[4] <= mark[4]:
        return None
    capacity = (now[4] - mark[4]) * len(os.sched_getaffinity(0))
    user = (now[0] - mark[0]) - (now[2] - mark[2])
    system = (now[1] - mark[1]) - (now[3] - mark[3])
    return {"user": max(0.0, user / capacity), "system": max(0.0, system / capacity)}


def wait_idle(limit: float, threshold: float = 0.10, window: float = 2.0) -> dict | None:
    """Wait (at most limit s) until others use < threshold of the CPUs over a window."""
    end = time.monotonic() + limit
    share = None
    while time.monotonic() < end:
        mark = cpu_times()
        time.sleep(window)
        share = other_cpu_share(mark)
        if share is None or share["user"] + share["system"] < threshold:
            break
    return share


# -- the run -------------------------------------------------------------------


def measure(
    variants: list[Variant], runs: int, warmup: int, deadline: float, rng: random.Random
) -> dict:
    """Warm-up rounds, then measured rounds; every round runs each variant once, shuffled."""
    info = {
        "requested": runs,
        "warmup_requested": warmup,
        "warmup_done": 0,
        "done": 0,
        "stopped_early": False,
        "reason": None,
    }
    order = list(variants)
    gc.collect()
    gc.disable()  # no collection inside a timed call; we collect between rounds
    try:
        for phase, count in (("warmup", warmup), ("measure", runs)):
            for _ in range(count):
                if time.monotonic() > deadline:
                    info["stopped_early"] = True
                    info["reason"] = f"--max-seconds reached during {phase}"
                    return info
                rng.shuffle(order)
                for v in order:
                    v.run(record=phase == "measure")
                info["warmup_done" if phase == "warmup" else "done"] += 1
                gc.collect()
    except KeyboardInterrupt:
        info["stopped_early"] = True
        info["reason"] = "interrupted"
    finally:
        gc.enable()
    return info


def pct_of(share: dict | None) -> str:
    if share is None:
        return "?"
    return (
        f"user {100 * share['user']:.0f}%, system {100 * share['system']:.0f}% "
        "(incl. kernel clean-up we cause)"
    )


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None or x != x else format(x, spec)


def print_table(results: dict[str, dict], ns_sets: list[str]) -> None:
    cols = (
        "variant",
        "ns",
        "n",
        "fail",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "mean ms",
        "min ms",
        "p50/floor",
    )
    rows = []
    for r in results.values():
        ratio = r.get("ratio_to_floor", {}).get("p50")
        rows.append(
            (
                r["name"],
                r["ns"] or "-",
                str(r["n"]),
                str(r["failures"]),
                fmt(r.get("p50_ms")),
                fmt(r.get("p95_ms")),
                fmt(r.get("p99_ms")),
                fmt(r.get("mean_ms")),
                fmt(r.get("min_ms")),
                "-" if ratio is None else f"{ratio:.2f}x",
            )
        )
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = "  ".join(
        c.ljust(w) if i < 2 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cols, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def compute_targets(
    variants: list[Variant], results: dict[str, dict], args, rng: random.Random
) -> list[dict]:
    by_key = {v.key: v for v in variants}
    targets: list[dict] = []

    def compare(kind: str, op, num: str, den: str, what: str, target: float | None,
                note: str = "") -> None:
        a, b = by_key.get(num), by_key.get(den)
        if not a or not b or not a.samples or not b.samples:
            return
        value = op(statistics.median(a.samples), statistics.median(b.samples))
        targets.append(
            {
                "what": what,
                "kind": kind,
                "numerator": num,
                "denominator": den,
                "value": value,
                "ci95": bootstrap_ci(a.samples, b.samples, op, rng),
                "target_max": target,
                "met": None if target is None else value <= target,
                "note": note,
            }
        )

    def ratio(*args, **kwargs) -> None:
        compare("ratio", lambda x, y: x / y, *args, **kwargs)

    def diff(*args, **kwargs) -> None:
        compare("diff_ms", lambda x, y: (x - y) / 1e6, *args, **kwargs)

    for label in args.ns_sets:
        ratio(
            f"nsbox[{label}]",
            f"floor[{label}]",
            f"nsbox p50 / floor p50 [{label}]",
            TARGET_FLOOR_RATIO,
        )
        ratio(
            f"nsbox-static[{label}]",
            f"floor-static[{label}]",
            f"nsbox-static p50 / floor-static p50 [{label}]",
            TARGET_FLOOR_RATIO,
        )
        ratio(
            f"nsbox-limits[{label}]",
            f"nsbox[{label}]",
            f"nsbox with memory+pids limits p50 / without [{label}]",
            TARGET_LIMITS_RATIO,
        )
        for mb, _ in args.workers[1:]:
            ratio(
                f"nsbox+{mb}MB[{label}]",
                f"nsbox+0MB[{label}]",
                f"nsbox p50 with {mb} MB / with 0 MB [{label}]",
                TARGET_BALLAST_RATIO,
            )
        ratio(
            f"unshare[{label}]",
            f"floor[{label}]",
            f"unshare p50 / floor p50 [{label}]",
            None,
            "includes subprocess.run overhead, see subprocess",
        )
        diff(f"unshare[{label}]", "subprocess", f"unshare - subprocess, p50 [{label}]", None)
        diff(f"bwrap[{label}]", "subprocess", f"bwrap - subprocess, p50 [{label}]", None)
        diff(f"nsbox[{label}]", f"floor[{label}]", f"nsbox - floor, p50 [{label}]", None)
    for mb, _ in args.workers[1:]:
        ratio(
            f"fork+{mb}MB",
            "fork+0MB",
            f"fork p50 with {mb} MB / with 0 MB",
            None,
            "reference: fork cost grows with the caller's memory",
        )
    diff("cli-nsbox", "cli-pass", "CLI: python -m nsbox run - python -c pass, p50", TARGET_CLI_MS)
    diff(
        "cli-nsbox", "cli-import", "CLI: python -m nsbox run - python -c 'import nsbox', p50", None
    )
    diff("cli-import", "cli-pass", "CLI: import nsbox - python -c pass, p50", None)
    return targets


def print_targets(targets: list[dict], runs_done: int) -> None:
    if not targets:
        return
    print()
    print(
        "ratios and differences (95% bootstrap CI of the medians)"
        + (f": only {runs_done} runs, verdicts mean nothing" if runs_done < 30 else "")
    )
    width = max(len(t["what"]) for t in targets)
    for t in targets:
        unit = "x" if t["kind"] == "ratio" else " ms"
        sign = "+" if t["kind"] == "diff_ms" else ""
        val = f"{t['value']:{sign}.2f}{unit}"
        ci = t["ci95"]
        ci_s = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        if t["target_max"] is None:
            verdict = ""
        else:
            verdict = f"target <= {sign}{t['target_max']:.2f}{unit}  " + (
                "ok" if t["met"] else "MISSED"
            )
        note = f"  ({t['note']})" if t["note"] else ""
        print(f"  {t['what']:<{width}}  {val:>10}  {ci_s:<16}  {verdict}{note}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Spawn latency of nsbox.run(['/bin/true']) against a C floor and "
        "other tools, measured interleaved in one run.",
        epilog="Variants: "
        + ", ".join(DEFAULT_VARIANTS)
        + "; groups: "
        + "; ".join(f"{k} = {v}" for k, v in GROUPS.items()),
    )
    p.add_argument(
        "-n",
        "--runs",
        type=int,
        default=300,
        help="measured rounds; each variant runs once per round (default 300)",
    )
    p.add_argument("--warmup", type=int, default=20, help="unrecorded rounds first (default 20)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=150.0,
        help="stop measuring after this long and report what was done (default 150)",
    )
    p.add_argument(
        "--variants",
        help="comma-separated subset (default: all except the "
        "ballast and cli groups, or just those groups with --compare-ballast/--cli)",
    )
    p.add_argument(
        "--ns",
        default="all",
        help="namespace set: all, none, user, "
        "user+mnt+pid+uts+ipc, or any '+'-joined names (default all)",
    )
    p.add_argument(
        "--ns-sets",
        help="several namespace sets in one run, comma-separated, "
        "e.g. all,none,user,user+mnt+pid+uts+ipc (overrides --ns)",
    )
    p.add_argument(
        "--ballast-mb",
        type=int,
        default=0,
        help="allocate and touch N MB in this process before measuring",
    )
    p.add_argument(
        "--compare-ballast",
        type=int,
        metavar="MB",
        help="also run nsbox and fork in two worker Pythons holding 0 and MB MB",
    )
    p.add_argument(
        "--cli",
        action="store_true",
        help="python -m nsbox run -- /bin/true against python -c pass and python -c 'import nsbox'",
    )
    p.add_argument(
        "--cli-pyc",
        choices=("cache", "env"),
        default="cache",
        help="cache (default): the CLI runs may write and read .pyc files, kept "
        "in benchmarks/.build/pycache, as an installed package would have them; "
        "env: inherit the environment as is (PYTHONDONTWRITEBYTECODE and all)",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before measuring, wait up to S seconds until other processes use under 10%% "
        "of the CPUs (checked over 2 s windows); default 0: do not wait",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="5 runs, 1 warm-up, every variant (64 MB ballast compare, CLI): a few seconds",
    )
    p.add_argument("--seed", type=int, default=None, help="shuffle seed (default: random)")
    p.add_argument(
        "--json", help="result file (default benchmarks/results/spawn_latency-<timestamp>.json)"
    )
    p.add_argument("--no-json", action="store_true", help="do not write a result file")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        return args
    if not 0 < args.max_seconds < float("inf"):  # NaN fails this too
        p.error(f"--max-seconds must be a positive number of seconds: {args.max_seconds}")

    if args.smoke:
        args.runs, args.warmup = 5, 1
        args.max_seconds = min(args.max_seconds, 60.0)
        if args.compare_ballast is None:
            args.compare_ballast = 64
        args.cli = True
        if args.variants is None:  # every variant but those that leave things behind
            args.variants = ",".join(DEFAULT_VARIANTS + tuple(GROUPS))
    if args.variants is None:
        chosen: list[str] = []
        if args.compare_ballast is not None:
            chosen += ["floor", "nsbox", "ballast"]
        if args.cli:
            chosen += ["cli"]
        chosen = chosen or list(DEFAULT_VARIANTS)
    else:
        chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
        if args.compare_ballast is not None and "ballast" not in chosen:
            chosen.append("ballast")
        if args.cli and "cli" not in chosen:
            chosen.append("cli")
    unknown = [v for v in chosen if v not in KNOWN_VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)} (known: {', '.join(KNOWN_VARIANTS)})")
    if "ballast" in chosen and args.compare_ballast is None:
        p.error("the ballast variants need --compare-ballast MB")
    if args.compare_ballast is not None and args.compare_ballast <= 0:
        p.error("--compare-ballast needs a positive size in MB")
    if args.runs < 1 or args.warmup < 0 or args.ballast_mb < 0:
        p.error("--runs must be >= 1, --warmup and --ballast-mb >= 0")
    args.variant_list = list(dict.fromkeys(chosen))
    sets = args.ns_sets.split(",") if args.ns_sets else [args.ns]
    args.ns_sets = list(dict.fromkeys(s.strip() for s in sets if s.strip()))
    for label in args.ns_sets:
        try:
            parse_ns_set(label)
        except argparse.ArgumentTypeError as e:
            p.error(str(e))
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._worker:
        return worker_main(args.ballast_mb)

    started = dt.datetime.now().astimezone()
    t_start = time.monotonic()
    deadline = t_start + args.max_seconds
    rng = random.Random(args.seed)
    machine = machine_info()
    if args.wait_idle > 0:
        share = wait_idle(args.wait_idle)
        machine["other_cpu_share_before"] = share
        print(f"waited for an idle machine: others at {pct_of(share)}")
        t_start = time.monotonic()  # the waiting is not part of the run's time bound
        deadline = t_start + args.max_seconds
    cpu_mark = cpu_times()
    tools = build(compiler())
    skipped: dict[str, str] = {}
    closers: list[Callable[[], None]] = []
    ballast = make_ballast(args.ballast_mb)
    rss_after_ballast_mb = current_rss_kb() / 1024

    # SIGTERM: finish like ^C (report what we have), so helpers are stopped cleanly.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args.workers = []
    try:
        if "ballast" in args.variant_list:
            try:
                for mb in (0, args.compare_ballast):
                    w = Worker(mb)
                    closers.append(w.close)
                    args.workers.append((mb, w))
            except (OSError, RuntimeError) as e:
                skipped["ballast"] = str(e)
                args.workers = []
        variants = make_variants(args, tools, skipped, closers)
        if not variants:
            print("nothing to measure:", skipped, file=sys.stderr)
            return 1
        print(
            f"spawn_latency: {len(variants)} variants, ns sets {', '.join(args.ns_sets)}, "
            f"{args.runs} rounds + {args.warmup} warm-up (interleaved, shuffled, seed "
            f"{args.seed}), max {args.max_seconds:.0f} s, ballast {args.ballast_mb} MB "
            f"(RSS {rss_after_ballast_mb:.0f} MB)",
            flush=True,
        )
        rounds = measure(variants, args.runs, args.warmup, deadline, rng)
        worker_rss = {f"{mb}MB": w.peak_rss_mb() for mb, w in args.workers}
    finally:
        for close in reversed(closers):
            close()
    elapsed = time.monotonic() - t_start
    del ballast

    results = {v.key: summarize(v) for v in variants}
    for v in variants:
        floor_key = v.floor and (v.floor if v.ns is None else f"{v.floor}[{v.ns}]")
        r, f = results[v.key], results.get(floor_key or "")
        if f and r.get("p50_ms") and f.get("p50_ms"):
            r["ratio_to_floor"] = {
                "floor": floor_key,
                **{k: r[f"{k}_ms"] / f[f"{k}_ms"] for k in ("p50", "p95", "p99", "mean", "min")},
            }
    targets = compute_targets(variants, results, args, rng)

    print()
    print_table(results, args.ns_sets)
    print_targets(targets, rounds["done"])
    for name, why in skipped.items():
        print(f"  skipped {name}: {why}")
    total_fail = sum(v.failures for v in variants)
    if total_fail:
        print("\nFAILURES:")
        for v in variants:
            if v.failures:
                print(f"  {v.key}: {v.failures} failed; first: {v.messages[0]}")
    usage_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    usage_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    stop_note = f", stopped early: {rounds['reason']}" if rounds["stopped_early"] else ""
    print(
        f"\n{rounds['done']}/{args.runs} rounds in {elapsed:.1f} s{stop_note}; peak RSS "
        f"self {usage_self:.0f} MB, largest child {usage_children:.0f} MB"
        + "".join(f", worker {k} {fmt(v, '.0f')} MB" for k, v in worker_rss.items())
        + "; quote ratios, not absolute times (shared, noisy machine)"
    )
    machine["loadavg_end"] = os.getloadavg()
    others = other_cpu_share(cpu_mark)
    machine["other_cpu_share"] = others
    print(
        f"load average (1 min) {machine['loadavg_start'][0]:.2f} at start, "
        f"{machine['loadavg_end'][0]:.2f} at end; CPU used by others during the run, "
        f"share of {machine['cpus_usable']} CPUs: {pct_of(others)}"
        + (
            "\nWARNING: other programs were busy. Variants that hand work between "
            "processes (nsbox, unshare, bwrap) suffer more from CPU contention than the "
            "floor: rerun when idle (--wait-idle helps)"
            if others is not None and others["user"] > 0.10
            else ""
        )
    )

    report = {
        "tool": "nsbox.bench.latency",
        "schema": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(elapsed, 3),
        "machine": machine,
        "parameters": {
            "runs": args.runs,
            "warmup": args.warmup,
            "max_seconds": args.max_seconds,
            "variants": args.variant_list,
            "ns_sets": args.ns_sets,
            "ballast_mb": args.ballast_mb,
            "rss_after_ballast_mb": round(rss_after_ballast_mb, 1),
            "compare_ballast_mb": args.compare_ballast,
            "cli": args.cli,
            "cli_pyc": args.cli_pyc,
            "env_PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
            "smoke": args.smoke,
            "seed": args.seed,
            "command": TRUE,
            "static_true": tools.get("true-static"),
            "floor": tools.get("floor"),
            "interleaving": "each round runs every variant once, in an order shuffled per "
            "round; floor runs are single iterations requested from a "
            "long-lived floor --serve process",
            "gc": "disabled during rounds, collected between rounds",
            "targets": {
                "nsbox_over_floor_p50_max": TARGET_FLOOR_RATIO,
                "ballast_ratio_p50_max": TARGET_BALLAST_RATIO,
                "cli_over_python_pass_ms_max": TARGET_CLI_MS,
                "limits_over_nsbox_p50_max": TARGET_LIMITS_RATIO,
            },
        },
        "rounds": rounds,
        "variants": results,
        "targets": targets,
        "failures": total_fail,
        "skipped": skipped,
        "build_errors": tools.get("errors"),
        "peak_rss_mb": {
            "self": round(usage_self, 1),
            "largest_child": round(usage_children, 1),
            "workers": worker_rss,
        },
    }
    if not args.no_json:
        path = (
            Path(args.json)
            if args.json
            else (RESULTS / f"spawn_latency-{started.strftime('%Y%m%d-%H%M%S')}.json")
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")
        print(f"results: {path}")
    return 1 if total_fail else 0


if __name__ == "__main__":
    sys.exit(main())
