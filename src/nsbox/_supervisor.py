"""The trio supervisor: many sandboxes at once, with structured concurrency.

    async with nsbox.open_supervisor(grace=1.0) as sup:
        result = await sup.run(["make", "test"], capture_output=True, timeout=60)
        box = await sup.start(["sleep", "100"])      # returns once the command runs
        await box.kill()                             # SIGTERM, grace, SIGKILL, reaped
        box = await nursery.start(sup.run, ["server"])  # owned by a nursery, like trio.run_process

Waiting is by pidfd readiness (trio's epoll), one small watcher task per
sandbox and no thread per sandbox; signalling is by pidfd. The clone itself
runs in one of a few worker threads (one per CPU). Leaving the `async with`
(normally, by an exception or by cancellation) ends every sandbox still
running: SIGTERM, `grace` seconds, SIGKILL, reaped, fds and cgroups released,
inside a shielded scope. So does cancelling `run()`.

Starts beyond the machine's capacity (or `max_live`) wait for a slot;
`start(..., wait=False)` raises nsbox.CapacityError naming the limit.

This is the only module that imports trio.
"""

from __future__ import annotations

import collections
import errno
import math
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from . import _errors
from ._frozen import Frozen, _restore
from ._native import above_stdio
from ._process import DEVNULL, PIPE, Sandbox, run_stdio
from ._protocol import RECORD_SIZE
from ._spec import (
    SPEC_FIELDS,
    SPEC_OPTIONS,
    Spec,
    _args,
    _env,
    _frozen_value,
    _signature,
    check_path,
    check_port,
    make_spec,
    remembered,
)

__all__ = ["open_supervisor", "Supervisor", "SupervisedSandbox", "SupervisorStatistics",
           "Pool", "capacity_limits"]

# Options that are per run, so a warm slot can serve them (the rest must match its pool).
_PER_RUN = frozenset({"stdin", "stdout", "stderr", "bufsize"})
_TEXT_OPTIONS = ("text", "universal_newlines", "encoding", "errors")
# s: a start waiting for a network address looks again at least this often (an
# address comes back once the hub has let its old namespace go, a little after the end)
ADDRESS_RETRY = 0.05
_SLOT_ARGS = ("nsbox-warm-slot",)  # a parked slot's placeholder command

# fds the supervisor holds per running sandbox: its pidfd. The report pipe is closed once
# the command runs: init's final record goes to a slot of one shared file (_StatusSlots).
# (Warm slots, timings=True and stdio pipes take more: the reserve and EMFILE bound those.)
FDS_PER_SANDBOX = 1
# After a warm slot is taken, its pool waits this long before making another:
# the clone, namespaces and mounts of a refill take a CPU for a millisecond or
# more, which would compete with the start that took the slot (and with the
# rest of a burst) instead of running after it.
REFILL_DELAY = 0.02
FD_RESERVE = 64


def _addresses_full(exc: BaseException) -> bool:
    """A network's address pool was full (admission waits for one, see start)."""
    return isinstance(exc, _errors.NetworkSetupError) and exc.errno == errno.ENOSPC


class _StatusSlots:
    """One memfd of RECORD_SIZE slots, one per running sandbox: where its
    nsbox-init writes its final (EXITED) record, so the supervisor holds no
    report pipe per sandbox. A slot is zeroed when given back."""

    GROW = 4096  # slots added at a time

    def __init__(self):
        self.fd = above_stdio(os.memfd_create("nsbox-status", os.MFD_CLOEXEC))
        self._free: list[int] = []
        self._next = 0
        self._size = 0

    def take(self) -> tuple[int, int]:
        if self._free:
            slot = self._free.pop()
        else:
            slot, self._next = self._next, self._next + 1
            if self._next > self._size:
                self._size += self.GROW
                os.ftruncate(self.fd, self._size * RECORD_SIZE)
        return self.fd, slot * RECORD_SIZE

    def give(self, status: tuple[int, int]) -> None:
        offset = status[1]
        os.pwrite(self.fd, bytes(RECORD_SIZE), offset)
        self._free.append(offset // RECORD_SIZE)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SupervisorStatistics(Frozen):
    """sup.statistics(): sandboxes `starting`, `live`; totals `exited` and
    `failed` (setup errors in the sandbox; not bad input, which raises SpecError
    before anything starts, nor cancelled starts); `pooled` (warm slots ready);
    `waiting` (starts queued for capacity); `fds_in_use` by this process;
    `capacity` and the `limit` that sets it."""

    __slots__ = ("starting", "live", "exited", "failed", "pooled", "waiting", "fds_in_use",
                 "capacity", "limit")
    starting: int
    live: int
    exited: int
    failed: int
    pooled: int
    waiting: int
    fds_in_use: int
    capacity: int
    limit: str

    def __init__(self, **fields: object):
        for name in self.__slots__:
            self._set(name, fields[name])


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def capacity_limits(raise_nofile: bool = True) -> dict[str, int]:
    """How many more sandboxes each of the machine's limits allows, by name.

    Raises the soft RLIMIT_NOFILE to the hard one first (the supervisor holds
    a few fds per sandbox). Each sandbox is at least two processes (its init
    and the command) and one user and one network namespace.
    """
    import resource

    out: dict[str, int] = {}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if raise_nofile and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    open_fds = len(os.listdir("/proc/self/fd"))
    out["RLIMIT_NOFILE"] = max((soft - open_fds - FD_RESERVE) // FDS_PER_SANDBOX, 0)
    procs = sum(1 for p in os.listdir("/proc") if p.isdigit())
    for name, path in (("pid_max", "/proc/sys/kernel/pid_max"),
                       ("threads-max", "/proc/sys/kernel/threads-max")):
        value = _read_int(path)
        if value is not None:
            out[name] = max((value - procs - 256) // 2, 0)
    for name in ("max_user_namespaces", "max_net_namespaces"):
        value = _read_int(f"/proc/sys/user/{name}")
        if value is not None:
            out[name] = value
    if os.geteuid() != 0:
        nproc, _ = resource.getrlimit(resource.RLIMIT_NPROC)
        if nproc != resource.RLIM_INFINITY:
            mine = 0
            uid = os.getuid()
            for p in os.listdir("/proc"):
                try:
                    if p.isdigit() and os.stat(f"/proc/{p}").st_uid == uid:
                        mine += 1
                except OSError:
                    pass
            out["RLIMIT_NPROC"] = max((nproc - mine - 16) // 2, 0)
    return out


class SupervisedSandbox:
    """A sandbox under a supervisor (from sup.start): `pid`, `spec`, `returncode`
    and `reason` once it has ended, trio streams `stdin`/`stdout`/`stderr`
    when asked for with nsbox.PIPE; `await wait()`, `await kill()`,
    `send_signal()`, `stats()`. As an async context manager it is killed
    (with the grace) and reaped on exit, also on cancellation."""

    def __init__(self, sup: Supervisor, box: Sandbox):
        self._sup = sup
        self._box = box
        self.pid = box.pid
        self.spec = box.spec
        self.args = box.args
        self._exited = trio.Event()
        self._result = None
        self._status = None  # its slot in the supervisor's _StatusSlots, if any
        self.stdin = self.stdout = self.stderr = None
        for name in ("stdin", "stdout", "stderr"):
            f = getattr(box, name)
            if f is not None:
                setattr(box, name, None)
                raw = f.detach() if hasattr(f, "detach") else f
                fd = os.dup(raw.fileno())
                raw.close()
                setattr(self, name, trio.lowlevel.FdStream(fd))

    @property
    def returncode(self) -> int | None:
        return self._box.returncode

    @property
    def reason(self) -> str | None:
        return self._box.reason

    def stats(self):
        return self._box.stats()

    @property
    def address(self):
        """The sandbox's IPv4 address on its network, or None."""
        return self._box.address

    @property
    def published(self) -> list[tuple[str, int, int]]:
        """The host ports published to it: (host address, host port, port)."""
        return self._box.published

    def rename(self, name: str | None) -> None:
        """Another name on its network (see nsbox.Sandbox.rename)."""
        self._box.rename(name)

    async def connect(self, port: int) -> trio.SocketStream:
        """A trio stream connected to `port` of the sandbox, from inside its network."""
        port = check_port(port)
        sock = trio.socket.from_stdlib_socket(self._box._network_socket())
        try:
            await sock.connect((str(self.address), port))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    def send_signal(self, sig: int) -> None:
        self._box.send_signal(sig)

    async def wait(self):
        """Wait for the sandbox to end; its nsbox.Result (stdout/stderr None)."""
        await self._exited.wait()
        return self._result

    async def kill(self, grace: float | None = None) -> None:
        """End the sandbox: SIGTERM, up to `grace` seconds (the supervisor's
        by default; 0 for SIGKILL at once), SIGKILL, and wait until reaped."""
        if self._exited.is_set():
            return
        grace = self._sup.grace if grace is None else grace
        with trio.CancelScope(shield=True):
            if grace > 0:
                self._box.send_signal(signal.SIGTERM)
                with trio.move_on_after(grace):
                    await self._exited.wait()
            if not self._exited.is_set():
                self._box.send_signal(signal.SIGKILL)
                await self._exited.wait()

    async def aclose(self) -> None:
        """Kill (with the grace) if it still runs, close the streams."""
        if self._exited.is_set() and self.stdin is None and self.stdout is None \
                and self.stderr is None:
            return  # (sup.run's usual case: nothing to do, no scope to enter)
        with trio.CancelScope(shield=True):
            await self.kill()
            for s in (self.stdin, self.stdout, self.stderr):
                if s is not None:
                    await s.aclose()

    async def __aenter__(self) -> SupervisedSandbox:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<nsbox.SupervisedSandbox pid={self.pid} returncode={self.returncode}>"

    # -- the supervisor's side ---------------------------------------------------------

    # KeyboardInterrupt is not raised in here (trio delivers it elsewhere, in the
    # caller's task): in a watcher it would come out wrapped in an ExceptionGroup.
    @trio.lowlevel.enable_ki_protection
    async def _watch(self) -> None:
        """Wait for init's exit on its pidfd, reap, release (the watcher task).

        Shielded: a cancelled supervisor ends its sandboxes through _shutdown
        (SIGTERM, grace, SIGKILL), and each watcher sees its own one end."""
        with trio.CancelScope(shield=True):
            await self._watch_unshielded()

    async def _watch_unshielded(self) -> None:
        box = self._box
        try:
            while box.returncode is None:
                fd = box.pidfd
                if fd < 0:
                    break
                await trio.lowlevel.wait_readable(fd)
                box.poll()
        finally:
            if box.returncode is None:  # cancelled: never leave it running
                box._kill_and_reap()
            from ._result import Result

            self._result = Result(box.args, box.returncode, None, None, pid=box.pid,
                                  reason=box.reason, stats=box.stats(), timings=box.timings)
            box.close()
            if self._status is not None:
                self._sup._status_slots.give(self._status)
                self._status = None
            self._sup._ended(self)
            self._exited.set()


def _pool_key(spec: Spec) -> Spec:
    """The part of a spec a warm slot is made from: all but args, env and cwd,
    which each run brings. Specs with pass_fds cannot be pooled."""
    if spec.pass_fds:
        raise _errors.SpecError("a warm pool cannot pass fds (pass_fds) to its sandboxes")
    if spec.name is not None or spec.publish:
        raise _errors.SpecError("a warm pool's sandboxes cannot share a name or published "
                                "ports: start named or publishing sandboxes cold")
    return spec.replace(args=_SLOT_ARGS, env={}, cwd=None)


def _run_spec(key: Spec, args: object, env: object, cwd: object) -> Spec:
    """The pool's spec with one run's args, env and cwd, each validated as Spec
    does; the other fields were validated with the pool's (no field's checks
    involve these three)."""
    run = {"args": _args(args), "env": _env(env),
           "cwd": None if cwd is None else check_path(cwd, "cwd")}
    return _restore(Spec, [run[f] if f in run else getattr(key, f) for f in SPEC_FIELDS])


class Pool:
    """Warm slots of one spec (from sup.pool): sandboxes whose namespaces,
    filesystem, network and cgroup are ready and whose init waits for a
    command. A start() or run() whose spec matches takes a slot: only the
    command (argv, environment, cwd, stdio) is sent, and it execs. Slots are
    single-use; the pool refills them in the background, one at a time,
    starting REFILL_DELAY seconds after a take (off the path of the starts
    that take them)."""

    def __init__(self, sup: Supervisor, key: Spec, size: int):
        self._sup = sup
        self.spec = key
        self.size = size
        self._ready: collections.deque[Sandbox] = collections.deque()
        self._wake = trio.Event()
        self._scope = trio.CancelScope()
        self._closed = False
        self.made = 0
        self.taken = 0
        self.evicted = 0  # ended unused to make room for a start no pool matched
        self.errors = 0
        self.last_error: BaseException | None = None

    @property
    def ready(self) -> int:
        return len(self._ready)

    def _take(self) -> Sandbox | None:
        slot = self._ready.popleft() if self._ready else None
        if slot is not None:
            self.taken += 1
        self._wake.set()
        return slot

    async def _refill(self) -> None:
        sup = self._sup
        backoff = 0.05
        with self._scope:
            while not self._closed:
                if len(self._ready) >= self.size:
                    self._wake = trio.Event()
                    await self._wake.wait()
                    await trio.sleep(REFILL_DELAY)
                    continue
                await sup._room_for_refill()
                made: list[Sandbox] = []

                def make(made=made):
                    made.append(sup._launcher(self.spec, _park=True, stdin=DEVNULL,
                                              stdout=DEVNULL, stderr=DEVNULL))

                try:
                    await trio.to_thread.run_sync(make, limiter=sup._spawners)
                except BaseException as exc:
                    sup._release()
                    for slot in made:
                        slot.close()
                    if not isinstance(exc, Exception):
                        raise
                    self.errors += 1
                    self.last_error = exc
                    await trio.sleep(backoff)  # e.g. a limit reached: try again later
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.05
                self.made += 1
                if self._closed:
                    made[0].close()
                    sup._release()
                    break
                if sup._waiting:
                    # A start began to wait for room while this slot was made:
                    # the room is its (a spare never keeps a start waiting).
                    made[0].close()
                    self.evicted += 1
                    sup._release()
                    continue
                self._ready.append(made[0])

    def _discard_all(self) -> None:
        """End the slots no run took (SIGKILL; init reaped at once)."""
        self._closed = True
        self._scope.cancel()
        while self._ready:
            self._ready.popleft().close()
            self._sup._release()

    def close(self) -> None:
        """Stop refilling and end the ready slots."""
        self._discard_all()
        self._sup._pools.pop(self.spec, None)
        self._sup._warm_index.clear()
        self._sup._run_specs.clear()

    def __repr__(self) -> str:
        return f"<nsbox.Pool ready={self.ready}/{self.size} taken={self.taken}>"


class Supervisor:
    """Made by open_supervisor(); see the module docstring."""

    def __init__(self, nursery: trio.Nursery | None, grace: float, max_live: int | None,
                 launcher=Sandbox):
        if isinstance(grace, bool) or not (isinstance(grace, (int, float)) and grace >= 0
                                           and math.isfinite(grace)):
            raise _errors.SpecError(f"grace must be a non-negative number of seconds: {grace!r}")
        self.grace = float(grace)
        self._nursery = nursery
        self._launcher = launcher  # nsbox.Sandbox; tests give a fake with its interface
        limits = capacity_limits()
        if max_live is not None:
            if isinstance(max_live, bool) or not isinstance(max_live, int) or max_live < 1:
                raise _errors.SpecError(f"max_live must be a positive integer: {max_live!r}")
            limits["max_live"] = max_live
        self.limit = min(limits, key=limits.get)
        self.capacity = max(limits[self.limit], 1 if self.limit == "max_live" else 0)
        self._slots = trio.Semaphore(self.capacity) if self.capacity else None
        # Threads that start sandboxes at once: two per CPU (a start is a clone,
        # CPU-bound, then a short wait for init's report).
        self._spawners = trio.CapacityLimiter(2 * max(len(os.sched_getaffinity(0)), 1))
        self._starting = 0
        self._waiting = 0
        self._exited_count = 0
        self._failed = 0
        self._live: set[SupervisedSandbox] = set()
        self._pools: dict[Spec, Pool] = {}
        # Start options (signature) -> the pool they match, or None (_warm_match).
        self._warm_index: dict[tuple, Pool | None] = {}
        self._run_specs: dict[tuple, Spec] = {}  # (signature, args, env, cwd) -> run spec
        self._closed = False
        self._none_live: trio.Event | None = None  # set when the last live one ends (shutdown)
        self._landed: trio.Event | None = None  # set as a start in flight ends (shutdown)
        self._room: trio.Event | None = None  # set as a slot is given back (pool refills)
        # Real sandboxes report their end into a shared file (tests' fakes do not).
        self._status_slots = _StatusSlots() if launcher is Sandbox else None

    # -- starting --------------------------------------------------------------------------

    async def _acquire(self, wait: bool) -> None:
        if self._slots is None:
            raise _errors.CapacityError(
                f"nsbox: no sandbox fits: {self.limit} allows none", self.limit, 0)
        try:
            self._slots.acquire_nowait()
            return
        except trio.WouldBlock:
            if self._evict_parked():  # a start goes before a spare
                self._slots.acquire_nowait()
                return
            if not wait:
                raise _errors.CapacityError(
                    f"nsbox: the supervisor is full: {self.capacity} sandboxes live, the "
                    f"limit of {self.limit}", self.limit, self.capacity) from None
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1

    def _release(self) -> None:
        """Give a slot back (a sandbox or a parked slot ended, a start failed)."""
        self._slots.release()
        if self._room is not None:
            self._room.set()
            self._room = None

    def _evict_parked(self, network: object = None) -> bool:
        """End one parked slot of the fullest pool (its room goes to a start that
        no pool matches); with `network`, of a pool on that network (its address
        goes back). False when none is parked."""
        pools = [p for p in self._pools.values() if network is None or p.spec.network == network]
        pool = max(pools, key=lambda p: len(p._ready), default=None)
        if pool is None or not pool._ready:
            return False
        pool._ready.pop().close()
        pool.evicted += 1
        pool._wake.set()  # to be refilled when there is room again
        self._slots.release()
        return True

    async def _room_for_refill(self) -> None:
        """A slot for a pool's refill: only when no start waits for one."""
        while True:
            if not self._waiting:
                try:
                    self._slots.acquire_nowait()
                    return
                except trio.WouldBlock:
                    pass
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    def _start_ended(self) -> None:
        self._starting -= 1
        if self._landed is not None:
            self._landed.set()

    async def start(self, args: object, *, wait: bool = True, **options: object
                    ) -> SupervisedSandbox:
        """Start a sandbox; returns once its command runs. Setup errors raise
        here (nsbox.SandboxSetupError and its kind). Options as for
        nsbox.Sandbox (stdin/stdout/stderr=nsbox.PIPE give trio streams)."""
        if self._closed:
            raise trio.ClosedResourceError("the supervisor is closed")
        if any(options.get(k) for k in _TEXT_OPTIONS) and \
                any(options.get(k) == PIPE for k in ("stdin", "stdout", "stderr")):
            raise _errors.SpecError("a supervised sandbox's streams are trio byte streams: "
                                    "text, encoding and errors are for sup.run")
        if self._pools and not (options.keys() - _PER_RUN - SPEC_OPTIONS) and \
                "pass_fds" not in options:
            handle = await self._start_warm(args, options)
            if handle is not None:
                return handle
        # Bad input raises now, not after a wait for room (make_spec remembers it).
        spec = make_spec(args, **{k: v for k, v in options.items() if k in SPEC_OPTIONS})
        evicted = False
        while True:
            try:
                return await self._start_cold(args, wait, options)
            except _errors.NetworkSetupError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                # The network's address pool is full: a parked slot of ours on it
                # gives its address up (back once the hub has let its namespace
                # go: a few ms); else queued like any other limit, until an
                # address is given back (ours, or another process's: looked at
                # again now and then).
                if not evicted and self._evict_parked(spec.network):
                    evicted = True
                elif not wait:
                    raise _errors.CapacityError(str(exc), "addresses", 0) from None
                self._waiting += 1
                try:
                    if self._room is None:
                        self._room = trio.Event()
                    with trio.move_on_after(ADDRESS_RETRY):
                        await self._room.wait()
                finally:
                    self._waiting -= 1

    async def _start_cold(self, args: object, wait: bool, options: dict
                          ) -> SupervisedSandbox:
        await self._acquire(wait)
        if self._closed:  # it closed while this start waited for room
            self._release()
            raise trio.ClosedResourceError("the supervisor is closed")
        self._starting += 1
        made: list = []  # the thread's result, kept even if we are cancelled meanwhile
        box = None
        extra = {}
        if self._status_slots is not None and "timings" not in options:
            extra["_status"] = self._status_slots.take()

        def spawn():
            made.append(self._launcher(args, _lazy_start=True, **extra, **options))
            made[0]._complete_start()

        try:
            if self._starting == 1:
                # The only start in flight: clone right here (a vfork, about a
                # millisecond; a thread hand-off would cost more than it saves)
                # and wait for init's report on the event loop.
                box = self._launcher(args, _lazy_start=True, **extra, **options)
                if box._start_pending:
                    await trio.lowlevel.wait_readable(box._report_fd)
                    box._complete_start()
            else:
                # Starts in parallel: the clone and the wait for the command to
                # start run in worker threads, so they use every CPU and the
                # event loop goes on.
                try:
                    await trio.to_thread.run_sync(spawn, limiter=self._spawners)
                finally:
                    box = made[0] if made else None
        except BaseException as exc:
            self._start_ended()
            self._release()
            if box is not None:
                box.close()
            if "_status" in extra:
                self._status_slots.give(extra["_status"])
            if isinstance(exc, Exception) and not _addresses_full(exc):
                self._failed += 1  # a setup error, not a cancellation or a full network
            raise
        self._start_ended()
        if "_status" in extra:
            box._release_report()  # the command runs: its end comes through the slot
        handle = SupervisedSandbox(self, box)
        handle._status = extra.get("_status")
        self._live.add(handle)
        self._nursery.start_soon(handle._watch, name=f"nsbox-watch-{box.pid}")
        return handle

    def _warm_match(self, args: object, options: dict) -> tuple[Pool | None, Spec | None]:
        """The pool whose slots fit a start, and the start's spec (None, None when
        no pool does). Options seen before map to their pool without building
        and hashing two Specs: only the per-run parts (args, env, cwd) are
        validated, and the spec is the pool's with them in place."""
        spec_options = {k: v for k, v in options.items() if k in SPEC_OPTIONS}
        sig = None
        if not isinstance(args, Spec):
            try:
                sig = _signature({k: v for k, v in spec_options.items()
                                  if k not in ("env", "cwd")})
            except TypeError:  # a value of a kind not known to compare safely
                pass
        if sig is not None and sig in self._warm_index:
            pool = self._warm_index[sig]
            if pool is None:
                return None, None
            env, cwd = spec_options.get("env"), spec_options.get("cwd")

            def run_key(_pool_spec, args, env, cwd):  # the same command again: the same spec
                return sig, _frozen_value(args), _frozen_value(env), _frozen_value(cwd)

            return pool, remembered(self._run_specs, run_key, _run_spec, pool.spec, args, env,
                                    cwd)
        spec = make_spec(args, **spec_options)
        pool = None
        if not (spec.pass_fds or spec.name is not None or spec.publish):
            pool = self._pools.get(_pool_key(spec))
        if sig is not None:
            if len(self._warm_index) >= 256:
                self._warm_index.clear()
            self._warm_index[sig] = pool
        return pool, spec

    async def _start_warm(self, args: object, options: dict) -> SupervisedSandbox | None:
        """Start in a warm slot of a matching pool; None when there is none ready."""
        pool, spec = self._warm_match(args, options)
        slot = pool._take() if pool is not None else None
        if slot is None:
            return None
        env = spec.env  # None: the caller's, sent as it is (see Sandbox._unpark)
        if spec.cwd is not None:
            cwd, required = spec.cwd, True
        else:
            try:
                cwd, required = os.getcwd(), False
            except OSError:
                cwd, required = None, False
        stdio = {k: v for k, v in options.items() if k in ("stdin", "stdout", "stderr")}
        self._starting += 1

        def unpark():
            slot._unpark(spec.args, env, cwd, required, **stdio)
            slot._complete_start()

        try:
            try:
                if self._starting == 1:  # alone: no thread hand-off (see start)
                    slot._unpark(spec.args, env, cwd, required, **stdio)
                    await trio.lowlevel.wait_readable(slot._report_fd)
                    slot._complete_start()
                else:
                    await trio.to_thread.run_sync(unpark, limiter=self._spawners)
            except OSError as exc:
                if isinstance(exc, _errors.NsboxError):
                    raise
                slot.close()  # the slot died while parked: start cold instead
                self._release()
                self._start_ended()
                return None
        except BaseException as exc:
            self._start_ended()
            slot.close()
            self._release()
            if isinstance(exc, Exception):
                self._failed += 1
            raise
        self._start_ended()
        slot.spec = spec
        handle = SupervisedSandbox(self, slot)
        self._live.add(handle)
        self._nursery.start_soon(handle._watch, name=f"nsbox-watch-{slot.pid}")
        return handle

    def pool(self, args: object, *, size: int, **options: object) -> Pool:
        """Keep `size` warm slots for sandboxes like `args`/`options` (their
        args, env and cwd may differ per run). Starts that match take a slot;
        others start cold. The slots count toward the supervisor's capacity."""
        if self._closed:
            raise trio.ClosedResourceError("the supervisor is closed")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise _errors.SpecError(f"pool size must be a positive integer: {size!r}")
        key = _pool_key(make_spec(args, **options))
        if key in self._pools:
            raise ValueError("this supervisor already has a pool for that spec")
        pool = Pool(self, key, size)
        self._pools[key] = pool
        self._warm_index.clear()
        self._run_specs.clear()
        self._nursery.start_soon(pool._refill, name="nsbox-pool-refill")
        return pool

    def _ended(self, handle: SupervisedSandbox) -> None:
        if handle in self._live:
            self._live.discard(handle)
            self._exited_count += 1
            self._release()
            if not self._live and self._none_live is not None:
                self._none_live.set()

    async def run(self, args: object, *, input: bytes | None = None,
                  capture_output: bool = False, timeout: float | None = None,
                  check: bool = False, task_status=trio.TASK_STATUS_IGNORED, **options: object):
        """Run a sandbox to its end, like subprocess.run: an nsbox.Result.

        On timeout the sandbox is killed at once and subprocess.TimeoutExpired
        raised; cancellation kills it (SIGTERM, grace, SIGKILL) and reaps it
        before the Cancelled goes on. `await nursery.start(sup.run, ...)` hands
        back the SupervisedSandbox once it runs, and the nursery owns it.
        """
        # Text mode as subprocess.run has it: str in, str out (UTF-8 unless an
        # encoding is given, universal newlines); the streams stay bytes.
        text_opts = {k: options.pop(k) for k in _TEXT_OPTIONS if k in options}
        if "universal_newlines" in text_opts and "text" in text_opts and \
                bool(text_opts["text"]) != bool(text_opts["universal_newlines"]):
            raise ValueError("text and universal_newlines must agree")
        text = any(text_opts.values())
        encoding = text_opts.get("encoding") or "utf-8"
        errors = text_opts.get("errors") or "strict"
        if input is not None:
            if isinstance(input, str):
                if not text:
                    raise TypeError("input must be bytes-like without text=True, not str")
                input = input.encode(encoding, errors)
            else:
                input = bytes(memoryview(input))  # bytes-like, or a TypeError now
        if timeout is not None:
            timeout = max(timeout, 0.0)  # a past deadline: killed at once, as subprocess does

        def decode(data: bytes | None):
            if data is None or not text:
                return data
            return data.decode(encoding, errors).replace("\r\n", "\n").replace("\r", "\n")

        run_stdio(options, input, capture_output)
        box = await self.start(args, **options)
        task_status.started(box)
        chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        timed_out = False
        try:
            if timeout is None and box.stdin is None and box.stdout is None and box.stderr is None:
                await box.wait()  # nothing to feed, drain or time: no nursery
            else:
                timed_out = await _pump(box, input, timeout, chunks)
        except BaseException:
            await box.aclose()
            raise
        await box.aclose()
        result = box._result  # ended: aclose waited for that (the wait was the checkpoint)
        out = decode(b"".join(chunks["stdout"]) if box.stdout is not None else None)
        err = decode(b"".join(chunks["stderr"]) if box.stderr is not None else None)
        if timed_out:
            raise subprocess.TimeoutExpired(box.args, timeout, output=out, stderr=err)
        result.stdout, result.stderr = out, err
        if check and result.returncode:
            raise subprocess.CalledProcessError(result.returncode, box.args, output=out,
                                                stderr=err)
        return result

    # -- state -----------------------------------------------------------------------------

    def statistics(self) -> SupervisorStatistics:
        return SupervisorStatistics(
            starting=self._starting, live=len(self._live), exited=self._exited_count,
            failed=self._failed, pooled=sum(p.ready for p in self._pools.values()),
            waiting=self._waiting,
            fds_in_use=len(os.listdir("/proc/self/fd")), capacity=self.capacity,
            limit=self.limit)

    async def _shutdown(self) -> KeyboardInterrupt | None:
        """Every live sandbox: SIGTERM, grace, SIGKILL, reaped (their watchers
        reap them). One pass of signals and one deadline for all, not a task
        and a timer per sandbox: with thousands live that is most of the
        teardown's own cost. A ^C meanwhile (trio delivers it to a blocked main
        task, shield or not) cuts the grace short and does not stop the rest:
        the KeyboardInterrupt is returned, for the caller to raise after."""
        self._closed = True
        interrupted: KeyboardInterrupt | None = None

        async def wait(event: trio.Event, deadline: float = math.inf) -> None:
            """Until `event` or `deadline`; a ^C ends it early (and is kept)."""
            nonlocal interrupted
            try:
                with trio.move_on_at(deadline):
                    await event.wait()
            except KeyboardInterrupt as exc:
                interrupted = interrupted or exc

        for pool in list(self._pools.values()):
            pool.close()
        # Starts in flight (their clone or init's report) land in _live first, so
        # they are ended with the rest; later ones see _closed and raise.
        while self._starting:
            self._landed = trio.Event()
            await wait(self._landed)
        if not self._live:
            return interrupted
        self._none_live = trio.Event()
        if self.grace > 0 and interrupted is None:
            for handle in list(self._live):
                handle.send_signal(signal.SIGTERM)
            await wait(self._none_live, trio.current_time() + self.grace)
        for handle in list(self._live):
            handle.send_signal(signal.SIGKILL)
        while self._live:
            await wait(self._none_live)
        return interrupted


async def _pump(box: SupervisedSandbox, input: bytes | None, timeout: float | None,
                chunks: dict[str, list[bytes]]) -> bool:
    """Feed the sandbox's stdin, drain its stdout/stderr into `chunks` and wait
    for its end; True when `timeout` passed first (it is then killed at once)."""
    async with trio.open_nursery() as io:
        if box.stdin is not None:
            io.start_soon(_feed, box.stdin, input or b"")
        for name in ("stdout", "stderr"):
            stream = getattr(box, name)
            if stream is not None:
                io.start_soon(_drain, stream, chunks[name])
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            await box.wait()
        if scope.cancelled_caught:
            box._box._cause = "timeout"
            await box.kill(grace=0)
            return True
    return False


async def _feed(stream, data: bytes) -> None:
    try:
        if data:
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def _drain(stream, into: list[bytes]) -> None:
    try:
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            into.append(chunk)
    except trio.ClosedResourceError:
        pass


@asynccontextmanager
async def open_supervisor(*, grace: float = 1.0, max_live: int | None = None,
                          _launcher=Sandbox) -> AsyncIterator[Supervisor]:
    """A supervisor for many sandboxes; leaving the block ends all of them.

    grace: seconds between SIGTERM and SIGKILL when a sandbox is ended by
    kill(), cancellation or the end of the block. max_live: at most this many
    sandboxes at once (the machine's own limits apply in any case).
    """
    sup = Supervisor(None, grace, max_live, _launcher)  # bad settings raise here, unwrapped
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            sup._nursery = nursery
            try:
                yield sup
            except BaseException as exc:
                # Raised again below, outside the nursery: the caller gets its own
                # exception, not one wrapped in an ExceptionGroup by the watchers' nursery.
                body_error = exc
            finally:
                with trio.CancelScope(shield=True):
                    interrupted = await sup._shutdown()
                if interrupted is not None and body_error is None:
                    body_error = interrupted  # a ^C while it ended them: raised now
    finally:
        if sup._status_slots is not None:  # every watcher has given its slot back
            sup._status_slots.close()
    if body_error is not None:
        raise body_error
