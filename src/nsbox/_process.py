"""The Sandbox handle and nsbox.run: a subprocess-like, synchronous API.

A Sandbox owns three kernel objects: the pidfd of the sandbox's init (pid 1),
the read end of its report pipe, and the parent ends of any stdio pipes. All
of them are released, and init is killed and reaped, on every path.
"""

from __future__ import annotations

import _thread
import errno
import functools
import io
import os
import select
import signal
import time
import warnings
import weakref

from . import _errors, _native, _plan, _protocol, _spec
from ._spec import Network, Spec, make_spec

__all__ = ["Sandbox", "run", "PIPE", "DEVNULL", "STDOUT"]

# subprocess's values (checked by a unit test). `subprocess` itself (with
# selectors and locale) is imported only where it is needed: start-up time
# of `python -m nsbox run` is part of every sandbox started from a shell.
PIPE = -1
STDOUT = -2
DEVNULL = -3


_MAX_WAIT = 86400.0  # s: the longest single poll (longer timeouts wait in pieces)


_started: weakref.WeakSet = weakref.WeakSet()  # this process's Sandboxes (_disown_after_fork)


def _disown_after_fork() -> None:
    """In a forked child: the parent's sandboxes are not its own. It must not
    kill them when its copies are dropped (nor reap them, nor read their end
    off the shared report pipe): its copies of their fds are closed, and each
    looks like a handle with nothing behind it (poll() None; kill() a no-op)."""
    for box in list(_started):
        box._lock = _thread.RLock()  # it may have been held by another thread at fork
        box._park_sock = None
        for attr in ("_pidfd", "_report_fd", "_command_pidfd"):
            fd = getattr(box, attr, -1)
            if fd >= 0:
                setattr(box, attr, -1)
                try:
                    os.close(fd)
                except OSError:
                    pass
    _started.clear()


os.register_at_fork(after_in_child=_disown_after_fork)


def _timeout_expired(*args, **kwargs):
    import subprocess

    return subprocess.TimeoutExpired(*args, **kwargs)

_PIPE_BUF = 65536

# The phases `timings` reports: "start" (the Sandbox call), then the C
# core's NSBOX_PHASE_* in order, then "reaped" (init reaped by the caller).
# "spawned" (the caller resumes after the child's exec) runs alongside
# nsbox-init's start: it may come after "init" or "exec".
PHASES = ("start", "clone", "child", "cgroup", "id_map", "mounts", "network", "privileges",
          "exec_init", "spawned", "init", "exec", "exited", "reaped")

# Signals from the caller that make a death by signal the caller's doing.
_ENDING_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                             signal.SIGQUIT})


@functools.lru_cache(maxsize=1)
def _RLIMIT_NAMES() -> dict[int, str]:  # noqa: N802 - a constant, computed once
    import resource

    return {resource.RLIMIT_CPU: "cpu_time", resource.RLIMIT_NOFILE: "nofile",
            resource.RLIMIT_FSIZE: "fsize", resource.RLIMIT_CORE: "core"}


@functools.lru_cache(maxsize=128)
def _cached_plan(spec: Spec, uid: int, gid: int, cwd: str | None, environ: tuple,
                 network_dir: str | None = None) -> _plan.Plan:
    return _plan.make_plan(spec, caller_uid=uid, caller_gid=gid, caller_cwd=cwd,
                           environ={os.fsdecode(k): os.fsdecode(v) for k, v in environ},
                           network_dir=network_dir)


def _hold_network(network: Network) -> None:
    from . import _network

    _network.hold(network)


def _unhold_network(network: Network) -> None:
    from . import _network

    _network.unhold(network)


_spec.NETWORK_HOOKS.update(hold=_hold_network, unhold=_unhold_network)


def _environ_key() -> tuple:
    """The caller's environment as (bytes, bytes) pairs, cheaply: os.environ's
    own encoded dict when it has one (a C-speed copy, no per-item decoding)."""
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        return tuple(data.items())
    return tuple((os.fsencode(k), os.fsencode(v)) for k, v in os.environ.items())


def _environ_blob() -> tuple[bytes, int]:
    """The caller's environment as one bytes of NUL-terminated KEY=VALUE
    strings, and their number (a parked slot's request carries them);
    rebuilt only when the environment changed."""
    key = _environ_key()
    cached = _environ_cache[0]
    if cached is None or cached[0] != key:
        cached = (key, b"".join(k + b"=" + v + b"\0" for k, v in key), len(key))
        _environ_cache[0] = cached  # one tuple: threads see one or the other, whole
    return cached[1], cached[2]


_environ_cache: list = [None]


def plan_for(spec: Spec, lease: object = None) -> _plan.Plan:
    """make_plan for the calling process, memoized: a Spec run again costs no replanning.

    With a network `lease` whose hub has a user namespace of its own, the
    sandbox's user namespace is made inside the hub's, where the caller is 0.
    """
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    environ = _environ_key() if spec.env is None else ()
    if lease is None:
        return _cached_plan(spec, os.geteuid(), os.getegid(), cwd, environ)
    if lease.userns_fd >= 0:
        uid = gid = 0
    else:
        uid, gid = os.geteuid(), os.getegid()
    return _cached_plan(spec, uid, gid, cwd, environ, lease.files)


class Sandbox:
    """A running sandbox, like subprocess.Popen.

    `Sandbox(args_or_spec, stdin=..., stdout=..., stderr=..., text=..., **options)`
    returns once the command runs; setup failures raise here. `pid` is the
    host pid of the sandbox's init (its pid 1), `pidfd` a pidfd for it.
    """

    def __init__(
        self,
        args: object,
        *,
        stdin: object = None,
        stdout: object = None,
        stderr: object = None,
        text: bool | None = None,
        encoding: str | None = None,
        errors: str | None = None,
        universal_newlines: bool | None = None,
        bufsize: int = -1,
        timings: bool = False,
        _debug_fail: tuple[str, int] | None = None,
        _lazy_start: bool = False,
        _park: bool = False,
        _status: tuple[int, int] | None = None,
        **options: object,
    ):
        self.returncode: int | None = None
        self.pid: int | None = None
        self._pidfd = -1
        self._report_fd = -1
        self._status = _status  # (fd, offset): init's final record also goes there
        self._command_pidfd = -1  # only without a pid namespace (see kill)
        # Re-entrant: a signal handler may call send_signal while this thread
        # is inside poll(); never held across a blocking wait.
        self._lock = _thread.RLock()
        self._closed_streams = False
        self.stdin = self.stdout = self.stderr = None
        self._outputs: dict[object, list[bytes]] = {}
        self._input_offset = 0
        self._input: bytes | None = None
        self._group = None  # the sandbox's _cgroup.Group, if it has cgroup limits
        self._cause: str | None = None  # 'timeout'/'killed' once the caller ends it
        self._stats = None
        self.reason: str | None = None
        self._started_at = time.monotonic()
        # Phase timestamps (ns) when asked for: see `timings`.
        self._phase_ns: dict[int, int] | None = {-1: time.monotonic_ns()} if timings else None

        spec = make_spec(args, **options)
        self.spec = spec
        self.args = args.args if isinstance(args, Spec) else args
        if universal_newlines is not None:
            if text is not None and bool(text) != bool(universal_newlines):
                raise ValueError("text and universal_newlines must agree")
            text = universal_newlines
        self.text_mode = bool(text or encoding or errors)
        self.encoding = encoding
        self.errors = errors
        debug = None
        if _debug_fail is not None:
            stage, err = _debug_fail
            debug = (_errors.STAGE_NUMBERS[stage], err)

        self._lease = self._net = None
        self.published: list[tuple[str, int, int]] = []
        if isinstance(spec.network, Network):
            from . import _network

            self._lease = _network.lease(spec.network, spec.name)
        self._net = self._lease  # kept after the lease is released: address, errors
        try:
            plan = plan_for(spec, self._lease)
            for entry in spec.publish:
                _network.publish(self._lease, entry)
            self.published = self._lease.published if self._lease is not None else []
        except BaseException:
            self._release_network()
            raise
        # What error messages name: the command and the cwd (a parked slot's
        # are those of the request that runs in it, see _unpark).
        self._argv0, self._cwd_shown = plan.argv[0], plan.cwd
        self._park_sock = None
        self._bufsize = bufsize
        child_fds: list[int] = []  # our copies of the child's ends, closed after spawn
        parent_fds: list[int] = []  # our ends, closed on failure
        try:
            stdio, parents = self._stdio(stdin, stdout, stderr, child_fds, parent_fds)
            rfd, wfd = os.pipe2(os.O_CLOEXEC)
            parent_fds.append(rfd)
            wfd = _native.above_stdio(wfd)
            child_fds.append(wfd)
            self._stdio_fds = stdio
            if plan.limits is not None and plan.limits.needs_cgroup:
                from . import _cgroup

                self._group = _cgroup.create(plan.limits)
            self._started_at = time.monotonic()
            park_fd = -1
            if _park:
                import socket

                mine, theirs = socket.socketpair(socket.AF_UNIX,
                                                 socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
                self._park_sock = mine
                park_fd = _native.above_stdio(theirs.detach())
                child_fds.append(park_fd)
            stamps: list[int] | None = [] if timings else None
            try:
                self.pid, self._pidfd = _native.spawn(plan, report_fd=wfd, stdio=stdio,
                                                      debug_fail=debug, cgroup=self._group,
                                                      timings=stamps, park_fd=park_fd,
                                                      lease=self._lease, status=_status)
            finally:
                if stamps:
                    self._phase_ns.update((i, ns) for i, ns in enumerate(stamps) if ns)
        except BaseException:
            for fd in child_fds + parent_fds:
                os.close(fd)
            if self._park_sock is not None:
                self._park_sock.close()
            if self._group is not None:
                self._remove_group()
            self._release_network()
            raise
        for fd in child_fds:
            os.close(fd)
        _started.add(self)
        if self._lease is not None:
            _network.hold_namespace(self._lease, self.pid)
        if self._group is not None:
            self._group.close_fds()
        self._report_fd = rfd
        self._decoder = _protocol.Decoder()
        self._records: list[_protocol.Record] = []
        self._plan = plan
        self.setup_error: _errors.NsboxError | None = None
        # run() need not wait for the command to start: the STARTED (or ERROR)
        # record is read with the exit status, one wake-up fewer. Without a pid
        # namespace the command's pid is needed early (see kill), so not then.
        self._start_pending = (_lazy_start and "pid" in plan.namespaces) or _park
        try:
            if not self._start_pending:
                self._wait_started(plan)
        except BaseException:
            for fd in parents:
                if fd >= 0:
                    os.close(fd)
            self._kill_and_reap()
            raise
        try:
            self._open_streams(parents, bufsize)
        except BaseException:
            opened = {s.fileno() for s in (self.stdin, self.stdout, self.stderr) if s}
            for fd in parents:
                if fd >= 0 and fd not in opened:
                    os.close(fd)
            self.close()
            raise

    # -- start-up --------------------------------------------------------------

    def _stdio(self, stdin, stdout, stderr, child_fds, parent_fds):
        """Child fds for 0-2 (-1 inherits) and our ends (-1 when none)."""
        stdio = [-1, -1, -1]
        parents = [-1, -1, -1]
        for i, spec in enumerate((stdin, stdout, stderr)):
            if spec is None:
                continue
            if spec == PIPE:
                r, w = os.pipe2(os.O_CLOEXEC)
                mine, theirs = (w, r) if i == 0 else (r, w)
                parent_fds.append(mine)
                child_fds.append(theirs)
                parents[i], stdio[i] = mine, theirs
            elif spec == DEVNULL:
                fd = os.open(os.devnull, (os.O_RDONLY if i == 0 else os.O_WRONLY) | os.O_CLOEXEC)
                child_fds.append(fd)
                stdio[i] = fd
            elif spec == STDOUT:
                if i != 2:
                    raise ValueError("STDOUT is only valid for stderr")
                stdio[2] = stdio[1] if stdio[1] >= 0 else 1
            elif isinstance(spec, int):
                if spec < 0:
                    raise ValueError(f"invalid file descriptor {spec}")
                stdio[i] = spec
            elif hasattr(spec, "fileno"):
                stdio[i] = spec.fileno()
            else:
                raise TypeError(f"invalid stdio value: {spec!r}")
        return tuple(stdio), parents

    def _next_record(self) -> _protocol.Record | None:
        """The next record read, keeping TIME records aside."""
        while self._records:
            rec = self._records.pop(0)
            if rec.kind != _protocol.TIME:
                return rec
            if self._phase_ns is not None:
                self._phase_ns[rec.stage] = rec.time_ns
        return None

    def _read_record(self, block: bool) -> _protocol.Record | None:
        """The next record from the report pipe, or None at EOF (or nothing yet)."""
        rec = self._next_record()
        if rec is not None:
            return rec
        if self._report_fd < 0:  # released: see _release_report
            return self._status_record()
        while True:
            if not block:
                os.set_blocking(self._report_fd, False)
            try:
                data = os.read(self._report_fd, _protocol.RECORD_SIZE * 4)
            except BlockingIOError:
                return None
            finally:
                if not block:
                    os.set_blocking(self._report_fd, True)
            if not data:
                return None
            self._records.extend(self._decoder.feed(data))
            rec = self._next_record()
            if rec is not None:
                return rec

    def _release_report(self) -> bool:
        """Close the report pipe of a started sandbox that has a status slot
        (a supervisor's: one fd per running sandbox instead of two); init's
        final record is then read from the slot. False when it must stay:
        no slot, the start not yet read, or timings asked for."""
        with self._lock:
            if (self._status is None or self._start_pending or self._report_fd < 0
                    or self._phase_ns is not None or self._records):
                return False
            fd, self._report_fd = self._report_fd, -1
            os.close(fd)
            return True

    def _status_record(self) -> _protocol.Record | None:
        """init's EXITED record from the status slot (once), or None."""
        fd, offset = self._status
        try:
            data = os.pread(fd, _protocol.RECORD_SIZE, offset)
        except OSError:
            return None
        if len(data) != _protocol.RECORD_SIZE or not any(data):
            return None
        self._status = None  # read once; the slot is the supervisor's again
        try:
            return _protocol.decode_one(data)
        except _protocol.ProtocolError:
            return None

    def _wait_started(self, plan: _plan.Plan) -> None:
        try:
            rec = self._read_record(block=True)
        except _protocol.ProtocolError as exc:
            raise _errors.NsboxInternalError(f"nsbox: bad report from the sandbox: {exc}") from None
        if rec is not None and rec.kind == _protocol.ERROR:
            raise self._error_for(rec)
        if rec is not None and rec.kind == _protocol.STARTED:
            if "pid" not in plan.namespaces:
                # No pid namespace: killing init would not take the command
                # with it. Its pid is a host pid here; hold a pidfd for it.
                try:
                    self._command_pidfd = os.pidfd_open(rec.value)
                except OSError:
                    pass
            return
        # EOF without a record: the child died before it could say anything.
        info = self._reap(block=True)
        raise _errors.SpawnError(
            errno.ECHILD,
            f"nsbox: the sandbox died during setup (status {info}) without a report",
        )

    def _unpark(self, args: tuple[str, ...], env: tuple[tuple[str, str], ...] | None,
                cwd: str | None,
                cwd_required: bool, stdin: object = None, stdout: object = None,
                stderr: object = None) -> None:
        """Run a command in this parked warm-pool slot: send the per-run parts
        (argv, environment (None: the caller's), cwd, stdio fds) to its init;
        then _complete_start.
        OSError (a slot that died meanwhile) leaves the slot to be discarded."""
        import socket
        import struct

        child_fds: list[int] = []
        parent_fds: list[int] = []
        try:
            stdio, parents = self._stdio(stdin, stdout, stderr, child_fds, parent_fds)
            flags = sum(1 << i for i, fd in enumerate(stdio) if fd >= 0)
            flags |= 8 if cwd_required else 0
            cwdb = os.fsencode(cwd) + b"\0" if cwd else b""
            if env is None:  # the caller's, as bytes already (see _environ_key)
                blob_env, nenv = _environ_blob()
                envb = [blob_env]
            else:
                envb = [os.fsencode(k) + b"=" + os.fsencode(v) + b"\0" for k, v in env]
                nenv = len(envb)
            blob = b"".join([
                struct.pack("=IIII", len(args), nenv, flags, len(cwdb)), cwdb,
                *(os.fsencode(a) + b"\0" for a in args), *envb,
            ])
            # The run starts now: wall_time does not count the time parked.
            self._started_at = time.monotonic()
            socket.send_fds(self._park_sock, [blob], [fd for fd in stdio if fd >= 0])
        except BaseException:
            for fd in parent_fds:
                os.close(fd)
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
            self._park_sock.close()
            self._park_sock = None
        self.args = list(args)
        self._argv0 = args[0]
        self._cwd_shown = cwd
        self._stdio_fds = stdio
        try:
            self._open_streams(parents, self._bufsize)
        except BaseException:
            for fd in parents:
                if fd >= 0:
                    os.close(fd)
            raise

    def _complete_start(self) -> None:
        """Finish a lazy start (the report pipe is readable): read STARTED or
        raise the setup error, the sandbox then killed, reaped and closed."""
        if not self._start_pending:
            return
        self._start_pending = False
        try:
            self._wait_started(self._plan)
        except BaseException:
            self.close()
            raise

    def _error_for(self, rec: _protocol.Record) -> _errors.SandboxSetupError:
        """The exception for an ERROR record, naming the spec element at fault."""
        plan = self._plan
        op = None
        if rec.stage == _errors.STAGE_NUMBERS["mount"] and 0 <= rec.index < len(plan.mounts):
            # The spec's own Bind/Tmpfs, or the description of a default mount.
            op = plan.mounts[rec.index].origin
        elif rec.stage == _errors.STAGE_NUMBERS["chdir"]:
            op = f"cwd {self._cwd_shown}"
        elif rec.stage == _errors.STAGE_NUMBERS["network"] and self._net is not None:
            op = self._net.at_step(rec.index)
        elif rec.stage == _errors.STAGE_NUMBERS["hostname"]:
            op = f"hostname {plan.hostname}"
        elif rec.stage == _errors.STAGE_NUMBERS["root"]:
            op = f"root {plan.root}"
        elif rec.stage == _errors.STAGE_NUMBERS["rlimit"] and 0 <= rec.index < len(plan.rlimits):
            res, soft, _ = plan.rlimits[rec.index]
            op = f"{_RLIMIT_NAMES().get(res, res)}={soft}"
            if rec.err == errno.EPERM:
                import resource

                hard = resource.getrlimit(res)[1]
                op += f"; raising it above this process's hard limit {hard} needs privilege"
        elif rec.stage == _errors.STAGE_NUMBERS["cgroup"] and self._group is not None:
            dirs = self._group.dirs
            op = (f"cgroup {dirs[rec.index]}" if 0 <= rec.index < len(dirs)
                  else "cgroup namespace")
        elif rec.stage == _errors.STAGE_NUMBERS["fds"]:
            # index: 0-2 the stdio fd for 0, 1, 2; 4+i the i-th fd kept (pass_fds first).
            if 0 <= rec.index < 3 and self._stdio_fds[rec.index] >= 0:
                name = ("stdin", "stdout", "stderr")[rec.index]
                op = f"{name} fd {self._stdio_fds[rec.index]}"
            elif 4 <= rec.index < 4 + len(plan.pass_fds):
                op = f"pass_fds fd {plan.pass_fds[rec.index - 4]}"
            else:
                op = "stdio and pass_fds"
        return _errors.setup_error(rec.stage, rec.err, op, command=self._argv0)

    def _open_streams(self, parents, bufsize: int) -> None:
        # As Popen: bufsize=1 means line buffering, which only text mode has.
        line_buffering = bufsize == 1 and self.text_mode
        if bufsize == 1:
            bufsize = -1
        for i, fd in enumerate(parents):
            if fd < 0:
                continue
            mode = "wb" if i == 0 else "rb"
            stream = open(fd, mode, bufsize)
            if self.text_mode:
                stream = io.TextIOWrapper(
                    stream, encoding=self.encoding, errors=self.errors,
                    write_through=(i == 0), line_buffering=(i == 0 and line_buffering),
                )
            setattr(self, ("stdin", "stdout", "stderr")[i], stream)

    # -- status ----------------------------------------------------------------

    @property
    def pidfd(self) -> int:
        """A pidfd of the sandbox's init; -1 once it has been reaped."""
        return self._pidfd

    def _reap(self, block: bool):
        """wait4 for init: (wait status, rusage), or None if it still runs.

        By pid, not pidfd: only wait4 returns the rusage, and init's pid cannot
        be reused before we reap it. The rusage covers every process of the
        sandbox: init reaps them all (or their parents did, and init those).
        """
        while True:
            try:
                pid, status, rusage = os.wait4(self.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return None
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            return (status, rusage) if pid else None

    def _finish(self, info) -> int:
        """Record the returncode from init's EXITED record (or its own status),
        the stats and the reason, and remove the cgroup."""
        ended = time.monotonic()
        if self._phase_ns is not None:
            self._phase_ns[PHASES.index("reaped") - 1] = time.monotonic_ns()
        try:
            record = self._read_record(block=False)
            if self._start_pending:
                self._start_pending = False
                if record is not None and record.kind == _protocol.ERROR:
                    self.setup_error = self._error_for(record)
                if record is not None and record.kind != _protocol.EXITED:
                    record = self._read_record(block=False)
        except _protocol.ProtocolError:
            record = None
        peak_kib = None
        if record is not None and record.kind == _protocol.EXITED:
            self.returncode = os.waitstatus_to_exitcode(record.value)
            peak_kib = record.index if record.index > 0 else None
        elif info is not None:
            self.returncode = os.waitstatus_to_exitcode(info[0])
        else:  # pragma: no cover - reaped elsewhere (SIGCHLD ignored)
            self.returncode = -signal.SIGKILL
        self._release()
        self._end_stats(ended, info, peak_kib)
        return self.returncode

    def _end_stats(self, ended: float, info, peak_kib: int | None) -> None:
        from . import _stats

        group = self._group
        try:
            self._stats = _stats.final(ended - self._started_at,
                                       info[1] if info is not None else None, group, peak_kib)
            self.reason = _stats.reason_for(self.returncode, self._stats, self._plan.limits,
                                            self._cause)
        finally:
            if group is not None:
                self._remove_group()

    def _remove_group(self) -> None:
        """Remove the sandbox's cgroup. It has ended, so a failure to remove
        is a warning (naming the cgroup left), not an error of the sandbox."""
        group, self._group = self._group, None
        try:
            group.remove()
        except OSError as exc:
            warnings.warn(f"nsbox: {exc}", ResourceWarning, stacklevel=3)

    def _release_network(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            from . import _network

            _network.release(lease)

    def _release(self) -> None:
        self._release_network()
        if self._park_sock is not None:
            self._park_sock.close()
            self._park_sock = None
        for attr in ("_pidfd", "_report_fd", "_command_pidfd"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                os.close(fd)

    def poll(self) -> int | None:
        """The returncode if the sandbox has ended, else None (does not block)."""
        with self._lock:
            if self.returncode is None and self._pidfd >= 0:
                info = self._reap(block=False)
                if info is not None:
                    self._finish(info)
            return self.returncode

    @property
    def timings(self) -> dict[str, float] | None:
        """With timings=True: when each phase of this sandbox was reached, in
        seconds since the Sandbox call began, in order (see nsbox.PHASES)."""
        if self._phase_ns is None:
            return None
        if self.returncode is None:
            with self._lock:
                if self._report_fd >= 0:  # TIME records that already arrived
                    try:
                        rec = self._read_record(block=False)
                    except _protocol.ProtocolError:
                        rec = None
                    if rec is not None:
                        self._records.insert(0, rec)
        t0 = self._phase_ns[-1]
        return {PHASES[i + 1]: (ns - t0) / 1e9 for i, ns in sorted(self._phase_ns.items())}

    def stats(self):
        """nsbox.Stats of the whole sandbox: live while it runs (psutil over
        its processes, and its cgroup), final once it has ended."""
        with self._lock:
            if self.returncode is not None:
                return self._stats
            from . import _stats

            return _stats.live(self.pid, time.monotonic() - self._started_at, self._group)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the sandbox to end; TimeoutExpired after `timeout` seconds."""
        if self.returncode is not None:
            return self.returncode
        # Block on the pidfd without the lock, so kill()/send_signal() from
        # other threads or signal handlers go through meanwhile.
        if not self._ready(timeout):
            raise _timeout_expired(self.args, timeout)
        with self._lock:
            if self.returncode is None and self._pidfd >= 0:
                self._finish(self._reap(block=True))
            return self.returncode

    def _ready(self, timeout: float | None) -> bool:
        """Whether init exits within `timeout` seconds (pidfd readability)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        with self._lock:
            if self._pidfd < 0:
                return True
            poller.register(self._pidfd, select.POLLIN)
        while True:
            if deadline is None:
                if poller.poll():
                    return True
                continue
            remaining = deadline - time.monotonic()
            # At most a day per poll: poll(2) takes an int of ms (a timeout of
            # weeks, as subprocess allows, is waited for in pieces).
            if poller.poll(min(max(remaining, 0), _MAX_WAIT) * 1000):
                return True
            if remaining <= 0:
                return False

    # -- signals ---------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the sandbox: init forwards TERM, INT, HUP, QUIT, USR1,
        USR2, WINCH and CONT to the command; SIGKILL ends the whole sandbox."""
        with self._lock:
            if self.returncode is not None or self._pidfd < 0:
                return
            if sig in _ENDING_SIGNALS and self._cause is None:
                self._cause = "killed"
            if sig == signal.SIGKILL and self._group is not None \
                    and "pid" not in self._plan.namespaces:
                self._group.kill()  # without a pid namespace, init's death is not enough
            if sig == signal.SIGKILL and self._command_pidfd >= 0:
                try:
                    signal.pidfd_send_signal(self._command_pidfd, sig)
                except ProcessLookupError:
                    pass
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        """SIGTERM to the command (through init)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to init: every process of the sandbox dies."""
        self.send_signal(signal.SIGKILL)

    def _kill_and_reap(self) -> None:
        with self._lock:
            if self._pidfd < 0:
                return
            if self._cause is None:
                self._cause = "killed"
            for fd in (self._command_pidfd, self._pidfd):
                if fd >= 0:
                    try:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self._finish(self._reap(block=True))

    # -- I/O -------------------------------------------------------------------

    def communicate(self, input: object = None, timeout: float | None = None):
        """Send `input`, read stdout/stderr to EOF, wait; like Popen.communicate."""
        if self._closed_streams and input:
            raise ValueError("Cannot send input after starting communication")
        streams = [s for s in (self.stdout, self.stderr) if s is not None]
        deadline = None if timeout is None else time.monotonic() + timeout
        if not streams and self.stdin is None:
            self.wait(timeout)
            return None, None
        if not self._closed_streams:
            self._closed_streams = True
            if self.stdin is not None:
                if input is not None:
                    data = input.encode(self.encoding or "utf-8", self.errors or "strict") \
                        if isinstance(input, str) else bytes(input)
                    self._input = data
                if self.stdin is not None:
                    try:
                        self.stdin.flush()
                    except BrokenPipeError:
                        pass
                    if not self._input:
                        self._close_stdin()
            for s in streams:
                self._outputs[s] = []
        self._pump(deadline, timeout)
        out = self._collect(self.stdout)
        err = self._collect(self.stderr)
        self.wait(None if deadline is None else max(deadline - time.monotonic(), 0))
        return out, err

    def _close_stdin(self) -> None:
        try:
            self.stdin.close()
        except BrokenPipeError:
            pass

    def _pump(self, deadline, timeout) -> None:
        import selectors

        sel = selectors.PollSelector()
        try:
            if self.stdin is not None and not self.stdin.closed and self._input:
                sel.register(self.stdin, selectors.EVENT_WRITE)
            for s in self._outputs:
                if not s.closed:
                    sel.register(s, selectors.EVENT_READ)
            while sel.get_map():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise _timeout_expired(
                        self.args, timeout, output=self._partial(self.stdout),
                        stderr=self._partial(self.stderr),
                    )
                for key, _ in sel.select(None if remaining is None
                                         else min(remaining, _MAX_WAIT)):
                    if key.fileobj is self.stdin:
                        chunk = self._input[self._input_offset : self._input_offset + _PIPE_BUF]
                        try:
                            self._input_offset += os.write(key.fd, chunk)
                        except BrokenPipeError:
                            self._input_offset = len(self._input)
                        if self._input_offset >= len(self._input):
                            sel.unregister(key.fileobj)
                            self._close_stdin()
                    else:
                        data = os.read(key.fd, 32768)
                        if not data:
                            sel.unregister(key.fileobj)
                            key.fileobj.close()
                        else:
                            self._outputs[key.fileobj].append(data)
        finally:
            sel.close()

    def _decode(self, data: bytes):
        if not self.text_mode:
            return data
        text = data.decode(self.encoding or "utf-8", self.errors or "strict")
        return text.replace("\r\n", "\n").replace("\r", "\n")

    def _partial(self, stream):
        if stream is None or stream not in self._outputs:
            return None
        return b"".join(self._outputs[stream])

    def _collect(self, stream):
        if stream is None:
            return None
        return self._decode(b"".join(self._outputs.get(stream, [])))

    # -- network ---------------------------------------------------------------

    @property
    def address(self):
        """The sandbox's IPv4 address on its network (an ipaddress.IPv4Address), or None."""
        return self._net.address if self._net is not None else None

    def rename(self, name: str | None) -> None:
        """Give the running sandbox another name on its network (None: none):
        what the network's DNS answers for from then on. Its host name inside
        stays what it was. nsbox.SpecError if another sandbox has the name."""
        from . import _network
        from ._spec import check_name

        if name is not None:
            name = check_name(name, "name")
        if self._lease is None:
            if self._net is None:
                raise ValueError("rename() needs a sandbox on a network (network='NAME')")
            raise ProcessLookupError(f"sandbox {self.pid} has ended")
        _network.rename(self._lease, name)

    def _network_socket(self):
        """An unconnected TCP socket inside the sandbox's network (see connect)."""
        from . import _network

        if self._lease is None:
            if self._net is None:
                raise ValueError("connect() needs a sandbox on a network (network='NAME')")
            raise ProcessLookupError(f"sandbox {self.pid} has ended")
        return _network.socket_in(self._lease)

    def connect(self, port: int, timeout: float | None = None):
        """A socket connected to `port` of the sandbox, from inside its network
        (no published port needed; works for callers without privilege too)."""
        port = _spec.check_port(port)
        sock = self._network_socket()
        try:
            sock.settimeout(timeout)
            sock.connect((str(self._net.address), port))
        except BaseException:
            sock.close()
            raise
        return sock

    # -- lifetime --------------------------------------------------------------

    def close(self) -> None:
        """Close our stream ends; kill and reap the sandbox if it still runs."""
        for s in (self.stdin, self.stdout, self.stderr):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        if self.returncode is None:
            self._kill_and_reap()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_pidfd", -1) >= 0 and self.returncode is None:
            warnings.warn(f"nsbox: sandbox {self.pid} still running; killing it",
                          ResourceWarning, source=self, stacklevel=2)
            try:
                self._kill_and_reap()
            except Exception:
                pass
        elif getattr(self, "_report_fd", -1) >= 0:
            self._release()

    def __repr__(self) -> str:
        return f"<nsbox.Sandbox pid={self.pid} returncode={self.returncode} args={self.args!r}>"


def run_stdio(options: dict, input: object, capture_output: bool) -> None:
    """subprocess.run's input= and capture_output= as stdio options (in place)."""
    if input is not None:
        if options.get("stdin") is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        options["stdin"] = PIPE
    if capture_output:
        if options.get("stdout") is not None or options.get("stderr") is not None:
            raise ValueError("stdout and stderr arguments may not be used with capture_output.")
        options["stdout"] = options["stderr"] = PIPE


def run(
    args: object,
    *,
    input: object = None,
    capture_output: bool = False,
    timeout: float | None = None,
    check: bool = False,
    **kwargs: object,
) -> Result:  # noqa: F821 (nsbox._result.Result, imported lazily)
    """Run a command in a new sandbox and wait for it, like subprocess.run.

    On timeout the whole sandbox is killed and reaped before
    subprocess.TimeoutExpired is raised; with check=True a non-zero status
    raises subprocess.CalledProcessError.
    """
    import subprocess

    from ._result import Result

    run_stdio(kwargs, input, capture_output)
    with Sandbox(args, _lazy_start=True, **kwargs) as box:
        try:
            stdout, stderr = box.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            box._cause = "timeout"
            box.kill()
            exc.stdout, exc.stderr = box.communicate()
            raise
        except BaseException:
            box.kill()
            raise
        retcode = box.poll()
        if retcode is None:  # pragma: no cover - communicate waited
            retcode = box.wait()
    if box.setup_error is not None:
        raise box.setup_error
    if check and retcode:
        raise subprocess.CalledProcessError(retcode, box.args, output=stdout, stderr=stderr)
    return Result(box.args, retcode, stdout, stderr, pid=box.pid, reason=box.reason,
                  stats=box.stats(), timings=box.timings)
