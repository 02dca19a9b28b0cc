"""python -m nsbox run [options] -- CMD [ARGS...]

Exit status: the command's own; 128+N if it died of signal N; 124 when
--timeout killed it; 125 for nsbox's own errors (one `nsbox: ...` line on
stderr); 126 found but not executable; 127 not found.

This module stays light: no trio, no pyroute2 (start-up time is part of the
cost of every sandbox started from a shell).
"""

from __future__ import annotations

import os
import signal
import sys
import time

EXIT_TIMEOUT = 124
EXIT_NSBOX = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127

FORWARDED_SIGNALS = (
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
)

RUN_DESCRIPTION = """\
Run CMD in a new sandbox: new user, mount, pid, uts, ipc, net and cgroup
namespaces; the host's / read-only, a fresh /proc, a minimal /dev and a private
tmpfs on /tmp. Your uid and gid are root inside (see --uid/--gid).
"""

RUN_EPILOG = """\
exit status: the command's; 128+N if it died of signal N; 124 if --timeout
killed it; 125 if nsbox itself failed (bad option, setup failure); 126 if CMD
cannot be executed; 127 if CMD was not found.

examples:
  python -m nsbox run -- sh -c 'id; hostname'
  python -m nsbox run --ro-bind /srv/data:/data --tmpfs /scratch:size=64M -- ls /data
  python -m nsbox run --rootfs ./alpine --hostname box --env TERM=dumb -- /bin/sh
"""


class CliError(Exception):
    """A usage error: printed as one `nsbox: ...` line, exit 125."""


class _BadValue(ValueError):
    """An option value our converters reject (argparse reports it as such)."""


def _split_colon(value: str) -> list[str]:
    r"""Split on ':'; '\:' is a literal colon and '\\' a literal backslash."""
    parts, cur, i = [], [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value) and value[i + 1] in ":\\":
            cur.append(value[i + 1])
            i += 2
            continue
        if c == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _escape_colon(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:")


def _bind_arg(value: str) -> tuple[str, str | None]:
    parts = _split_colon(value)
    if not parts[0] or len(parts) > 2:
        raise _BadValue(f"expected SRC[:DST], got {value!r}")
    return parts[0], (parts[1] if len(parts) == 2 else None)


def _tmpfs_arg(value: str) -> tuple[str, str | None, int | None]:
    parts = _split_colon(value)
    if len(parts) > 2:
        raise _BadValue(f"expected DST[:size=N,mode=M], got {value!r}")
    dst, opts = parts[0], (parts[1] if len(parts) == 2 else "")
    size = mode = None
    for opt in filter(None, opts.split(",")):
        key, sep, val = opt.partition("=")
        if key == "size" and sep:
            size = val
        elif key == "mode" and sep:
            try:
                mode = int(val, 8)
            except ValueError:
                raise _BadValue(f"tmpfs mode must be octal: {val!r}") from None
        else:
            raise _BadValue(
                f"unknown tmpfs option {opt!r} (expected size=N or mode=OCTAL)"
            )
    return dst, size, mode


def _int_arg(value: str) -> int:
    try:
        return int(value, 10)
    except ValueError:
        raise _BadValue(f"expected an integer, got {value!r}") from None


def _timeout_arg(value: str) -> float:
    try:
        t = float(value)
    except ValueError:
        raise _BadValue(f"expected seconds, got {value!r}") from None
    if not t > 0 or t != t or t == float("inf"):
        raise _BadValue(f"timeout must be a positive number: {value!r}")
    return t


def _network_arg(value: str) -> str:
    # none, host, or a network's name (checked by Spec: a bad one is a SpecError).
    return value


_parser_class = None


def _strict_parser():
    """argparse.ArgumentParser whose usage errors raise CliError (one `nsbox:`
    line, exit 125) instead of exiting 2 with a usage dump. Made on first use:
    argparse is not imported on the fast path."""
    global _parser_class
    if _parser_class is None:
        import argparse

        class Parser(argparse.ArgumentParser):
            def error(self, message: str):
                raise CliError(message)

        _parser_class = Parser
    return _parser_class


def build_parser():
    """The argparse parser: --help, and the messages for argv the fast path declines."""
    import argparse

    Parser = _strict_parser()

    class MountAction(argparse.Action):
        """--bind/--ro-bind/--tmpfs append to one list, so their order is kept."""

        def __call__(self, parser, namespace, values, option_string=None):
            mounts = list(getattr(namespace, "mounts", None) or [])
            mounts.append((self.const, values))
            namespace.mounts = mounts

    def typed(fn):
        def convert(value):
            try:
                return fn(value)
            except _BadValue as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        convert.__name__ = fn.__name__
        return convert

    _bind, _tmpfs, _int, _timeout = map(typed, (_bind_arg, _tmpfs_arg, _int_arg, _timeout_arg))
    parser = Parser(prog="python -m nsbox", description="Fast Linux namespace sandboxes.",
                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    run = sub.add_parser(
        "run", help="run a command in a new sandbox", description=RUN_DESCRIPTION,
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    fs = run.add_argument_group("filesystem")
    fs.add_argument("--rootfs", metavar="DIR",
                    help="use DIR (read-only) as / instead of the host's root")
    fs.add_argument("--bind", metavar="SRC[:DST]", action=MountAction, const="bind",
                    type=_bind, dest="mounts",
                    help="bind host path SRC read-write at DST (default: the same path); "
                         "a missing DST is created in the sandbox's view only; write '\\:' "
                         "for a ':' in a path")
    fs.add_argument("--ro-bind", metavar="SRC[:DST]", action=MountAction, const="ro-bind",
                    type=_bind, dest="mounts", help="like --bind, read-only")
    fs.add_argument("--tmpfs", metavar="DST[:size=N,mode=M]", action=MountAction,
                    const="tmpfs", type=_tmpfs, dest="mounts",
                    help="a fresh tmpfs at DST, size in bytes or like 64M, octal mode")
    fs.add_argument("--chdir", metavar="DIR",
                    help="working directory inside (default: the current one if it exists "
                         "inside, else /)")
    ident = run.add_argument_group("identity and isolation")
    ident.add_argument("--network", metavar="MODE|NAME", default=None,
                       help="none: own network namespace with only loopback (default); "
                            "host: share the host's network; NAME: join that network "
                            "(eth0, an address, names), 'bridge' being the default one")
    ident.add_argument("--name", metavar="NAME",
                       help="the sandbox's name on its network: NAME and NAME.NETWORK.nsbox "
                            "resolve to it from the network's sandboxes (and are its host name)")
    ident.add_argument("--publish", "-p", metavar="[ADDR:]HOSTPORT:PORT", action="append",
                       default=[],
                       help="forward the host's ADDR:HOSTPORT (default address 127.0.0.1; "
                            "HOSTPORT 0: any free port, printed) to the sandbox's PORT; "
                            "repeatable")
    ident.add_argument("--hostname", metavar="NAME", help="host name inside the sandbox")
    ident.add_argument("--uid", metavar="N", type=_int, help="uid inside (default 0)")
    ident.add_argument("--gid", metavar="N", type=_int, help="gid inside (default 0)")
    ident.add_argument("--namespaces", metavar="LIST",
                       help="comma-separated namespaces to create (default: all of "
                            "user,mount,pid,uts,ipc,net,cgroup)")
    env = run.add_argument_group("environment")
    env.add_argument("--env", metavar="K=V", action="append", default=[],
                     help="set an environment variable (repeatable); K alone copies the "
                          "caller's value")
    env.add_argument("--clearenv", action="store_true",
                     help="start from an empty environment instead of the caller's")
    lim = run.add_argument_group(
        "limits", "cgroup limits (memory, memory-swap, pids, cpus) give the sandbox a cgroup of "
        "its own; the rest are rlimits of the command")
    lim.add_argument("--memory", metavar="SIZE", help="memory limit, bytes or like 256M (no "
                     "swap unless --memory-swap)")
    lim.add_argument("--memory-swap", metavar="SIZE",
                     help="memory plus swap, as docker's; -1 for unlimited swap")
    lim.add_argument("--pids", metavar="N", help="most tasks at once (the sandbox's init too)")
    lim.add_argument("--cpus", metavar="N", help="CPU time as a number of CPUs, e.g. 0.5")
    lim.add_argument("--cpu-time", metavar="SECONDS",
                     help="CPU seconds per process (RLIMIT_CPU): SIGXCPU, then SIGKILL 1 s on")
    lim.add_argument("--nofile", metavar="N", help="most open files (RLIMIT_NOFILE)")
    lim.add_argument("--fsize", metavar="SIZE", help="largest file written (RLIMIT_FSIZE)")
    lim.add_argument("--core", metavar="SIZE", help="largest core dump, 0 for none")
    lim.add_argument("--cgroup-parent", metavar="CGROUP",
                     help="make the sandbox's cgroup under this one (a path as in "
                          "/proc/self/cgroup; default /nsbox, or the user's delegated subtree)")
    ctl = run.add_argument_group("control")
    ctl.add_argument("--timeout", metavar="SECONDS", type=_timeout,
                     help="kill the whole sandbox after SECONDS and exit 124")
    ctl.add_argument("--status-fd", metavar="FD", type=_int,
                     help="write JSON lines to FD: a 'started' event with the pid, an "
                          "'exited' event with returncode, signal, reason and stats")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                     help="the command to run")
    # Listed for --help; main() hands these to their own parsers.
    sub.add_parser("serve", help="route HTTP requests to environments made on demand "
                                 "(python -m nsbox serve --help)", add_help=False)
    sub.add_parser("bench", help="the benchmark suite (python -m nsbox bench --help)",
                   add_help=False)
    return parser


# -- the fast path -----------------------------------------------------------------
# argparse costs ~3 ms of import and set-up, a fifth of the CLI's budget over a
# bare `python -c pass`. Ordinary argv is parsed here with the same meaning;
# anything else (--help, errors, a value that looks like an option) goes to
# argparse, which then gives its usual messages. A unit test compares the two.

_VALUE_OPTIONS = {
    "--rootfs": ("rootfs", str),
    "--chdir": ("chdir", str),
    "--network": ("network", _network_arg),
    "--hostname": ("hostname", str),
    "--name": ("name", str),
    "--uid": ("uid", _int_arg),
    "--gid": ("gid", _int_arg),
    "--namespaces": ("namespaces", str),
    "--timeout": ("timeout", _timeout_arg),
    "--status-fd": ("status_fd", _int_arg),
    "--memory": ("memory", str),
    "--memory-swap": ("memory_swap", str),
    "--pids": ("pids", str),
    "--cpus": ("cpus", str),
    "--cpu-time": ("cpu_time", str),
    "--nofile": ("nofile", str),
    "--fsize": ("fsize", str),
    "--core": ("core", str),
    "--cgroup-parent": ("cgroup_parent", str),
}
LIMIT_OPTIONS = ("memory", "memory_swap", "pids", "cpus", "cpu_time", "nofile", "fsize", "core",
                 "cgroup_parent")
_MOUNT_OPTIONS = {"--bind": _bind_arg, "--ro-bind": _bind_arg, "--tmpfs": _tmpfs_arg}


class RunArgs:
    """The parsed `run` options (the fields of argparse's Namespace for it)."""

    __slots__ = ("rootfs", "chdir", "network", "hostname", "uid", "gid", "namespaces",
                 "timeout", "status_fd", "mounts", "env", "clearenv", "cmd", "name", "publish",
                 *LIMIT_OPTIONS)

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, None)
        self.env = []
        self.publish = []
        self.clearenv = False
        self.cmd = []

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


def _looks_negative(value: str) -> bool:
    """argparse's test for a value like '-5' or '-.5' (taken as a value, not an option)."""
    body = value[1:]
    whole, dot, frac = body.partition(".")
    if dot:
        return whole.isdigit() and frac.isdigit() if whole else frac.isdigit()
    return body.isdigit()


def fast_parse(argv: list[str]) -> RunArgs | None:
    """`run` options -> RunArgs, or None when argparse must decide."""
    args = RunArgs()
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--" or not token.startswith("-") or token == "-":
            args.cmd = argv[i:]
            return args
        name, eq, value = token.partition("=")
        if name == "--clearenv":
            if eq:
                return None
            args.clearenv = True
            i += 1
            continue
        if name not in _VALUE_OPTIONS and name not in _MOUNT_OPTIONS and \
                name not in ("--env", "--publish"):
            return None
        if eq:
            if value == "--":  # argparse strips a '--' even from '--opt=--'
                return None
            i += 1
        else:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            if value.startswith("-") and not _looks_negative(value):
                return None
            i += 2
        try:
            if name == "--env":
                args.env.append(value)
            elif name == "--publish":
                args.publish.append(value)
            elif name in _MOUNT_OPTIONS:
                args.mounts = [*(args.mounts or ()), (name[2:], _MOUNT_OPTIONS[name](value))]
            else:
                dest, convert = _VALUE_OPTIONS[name]
                setattr(args, dest, convert(value))
        except _BadValue:
            return None
    return args


def _env_from(args) -> dict[str, str] | None:
    if not args.env and not args.clearenv:
        return None
    env: dict[str, str] = {} if args.clearenv else dict(os.environ)
    for item in args.env:
        key, sep, value = item.partition("=")
        if not key:
            raise CliError(f"--env expects K=V, got {item!r}")
        if sep:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    return env


def parse_run(argv: list[str]):
    """`run` argv (after the word run) -> (Spec, timeout, status_fd). Raises CliError/SpecError."""
    from ._spec import Bind, Limits, Spec, Tmpfs

    ns = fast_parse(argv)
    if ns is None:
        ns = build_parser().parse_args(["run", *argv])
    cmd = ns.cmd
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise CliError("no command given (usage: python -m nsbox run [options] -- CMD [ARGS...])")
    mounts: list[object] = []
    for kind, value in ns.mounts or ():
        if kind == "tmpfs":
            dst, size, mode = value
            mounts.append(Tmpfs(dst, size=size) if mode is None else
                          Tmpfs(dst, size=size, mode=mode))
        else:
            src, dst = value
            src = os.path.abspath(src)  # host paths may be relative to the caller's cwd
            mounts.append(Bind(src, src if dst is None else dst, readonly=kind == "ro-bind"))
    spec = Spec(
        cmd,
        env=_env_from(ns),
        cwd=ns.chdir,
        # '' is not "no rootfs": the Spec refuses it (as it does --chdir '').
        rootfs=os.path.abspath(ns.rootfs) if ns.rootfs else ns.rootfs,
        mounts=mounts,
        network=ns.network,
        hostname=ns.hostname,
        name=ns.name,
        publish=ns.publish,
        uid=ns.uid,
        gid=ns.gid,
        namespaces=ns.namespaces,
        limits=_limits_from(ns, Limits),
    )
    return spec, ns.timeout, ns.status_fd


def _limits_from(ns, limits_class):
    given = {name: getattr(ns, name) for name in LIMIT_OPTIONS if getattr(ns, name) is not None}
    if not given:
        return None
    if given.get("memory_swap") == "-1":
        given["memory_swap"] = -1
    return limits_class(**given)


def spec_to_argv(spec) -> list[str]:
    """The `run` options that rebuild `spec` (parse_run(spec_to_argv(s))[0] == s)."""
    from ._spec import NAMESPACES, Bind

    # --opt=value throughout: a value starting with '-' is never taken for an option.
    argv: list[str] = []
    if spec.rootfs:
        argv.append(f"--rootfs={spec.rootfs}")
    for m in spec.mounts:
        if isinstance(m, Bind):
            kind = "--ro-bind" if m.readonly else "--bind"
            argv.append(f"{kind}={_escape_colon(m.src)}:{_escape_colon(m.dst)}")
        else:
            opts = []
            if m.size is not None:
                opts.append(f"size={m.size}")
            if m.mode != 0o755:
                opts.append(f"mode={m.mode:o}")
            argv.append(f"--tmpfs={_escape_colon(m.dst)}" + (":" + ",".join(opts) if opts else ""))
    if spec.cwd:
        argv.append(f"--chdir={spec.cwd}")
    if spec.network != "none":
        argv.append(f"--network={getattr(spec.network, 'name', spec.network)}")
    if spec.name is not None:
        argv.append(f"--name={spec.name}")
    for p in spec.publish:
        argv.append(f"--publish={p.host_address}:{p.host_port}:{p.port}")
    if spec.hostname:
        argv.append(f"--hostname={spec.hostname}")
    if spec.uid is not None:
        argv.append(f"--uid={spec.uid}")
    if spec.gid is not None:
        argv.append(f"--gid={spec.gid}")
    default_ns = set(NAMESPACES) - ({"net"} if spec.network == "host" else set())
    if set(spec.namespaces) != default_ns:
        argv.append("--namespaces=" + ",".join(n for n in NAMESPACES if n in spec.namespaces))
    if spec.limits is not None:
        for name in LIMIT_OPTIONS:
            value = getattr(spec.limits, name)
            if value is not None:
                argv.append(f"--{name.replace('_', '-')}={value!r}" if isinstance(value, float)
                            else f"--{name.replace('_', '-')}={value}")
    if spec.env is not None:
        argv.append("--clearenv")
        for key, value in spec.env:
            argv.append(f"--env={key}={value}")
    return [*argv, "--", *spec.args]


def _err(message: str) -> None:
    if not message.startswith("nsbox: "):
        message = "nsbox: " + message
    sys.stderr.write(message.replace("\n", " ") + "\n")
    sys.stderr.flush()


class _StatusWriter:
    def __init__(self, fd: int | None):
        self.fd = fd

    def check(self) -> None:
        if self.fd is None:
            return
        if not 0 <= self.fd < 2**31:
            raise CliError(f"--status-fd {self.fd}: not a file descriptor")
        try:
            os.fstat(self.fd)
        except OSError as exc:
            raise CliError(f"--status-fd {self.fd}: {exc.strerror}") from None

    def event(self, **fields: object) -> None:
        if self.fd is None:
            return
        import json

        try:
            os.write(self.fd, (json.dumps(fields) + "\n").encode())
        except OSError:
            pass


class _SignalRelay:
    """Forwards the signals sent to us to the running sandbox, from a thread
    that takes them with sigtimedwait, so it sees who sent each: one the
    kernel sent (si_code SI_KERNEL: a terminal's ^C or quit key, resize or
    hangup, to its whole foreground process group) reached the command in
    that group already, and is not sent twice."""

    SI_KERNEL = 0x80

    def __init__(self, box) -> None:
        import threading

        self._box = box
        self._done = threading.Event()
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)  # the thread inherits it
        self._thread = threading.Thread(target=self._relay, name="nsbox-signals", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        wanted = set(FORWARDED_SIGNALS)
        while not self._done.is_set():
            info = signal.sigtimedwait(FORWARDED_SIGNALS, 0.1)
            # A wait cut short (the CLI stopped and continued: ^Z, fg) can hand
            # back a siginfo that is not one: only ours are forwarded.
            if info is None or info.si_signo not in wanted or info.si_code == self.SI_KERNEL:
                continue
            try:
                self._box.send_signal(info.si_signo)
            except (OSError, ValueError):
                pass

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        # Any still pending go to the handlers (forward) once unblocked.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)


def _run(argv: list[str]) -> int:
    from . import _errors
    from ._process import Sandbox

    try:
        spec, timeout, status_fd = parse_run(argv)
    except (CliError, _errors.SpecError) as exc:
        _err(str(exc))
        return EXIT_NSBOX
    status = _StatusWriter(status_fd)
    try:
        status.check()
    except CliError as exc:
        _err(str(exc))
        return EXIT_NSBOX

    # Signals that arrive before the sandbox exists are delivered once it does.
    box = None
    pending: list[int] = []

    def forward(signum, frame):
        if box is None:
            pending.append(signum)
        else:
            box.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    started = time.monotonic()
    try:
        try:
            # --status-fd is ours, not the command's: the sandbox does not get it.
            box = Sandbox(spec)
        except _errors.ExecError as exc:
            _err(str(exc))
            return exc.exit_code
        except _errors.NsboxError as exc:
            _err(str(exc))
            return EXIT_NSBOX
        if box.address is not None:
            status.event(event="started", pid=box.pid, address=str(box.address),
                         published=[list(p) for p in box.published])
        else:
            status.event(event="started", pid=box.pid)
        for asked, (addr, host_port, port) in zip(spec.publish, box.published, strict=True):
            if asked.host_port == 0:  # the caller cannot know it otherwise
                _err(f"published {addr}:{host_port} -> {port}")
        for sig in pending:
            box.send_signal(sig)
        timed_out = False
        relay = _SignalRelay(box)
        try:
            code = box.wait(timeout)
        except Exception as exc:
            import subprocess

            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            timed_out = True
            box._cause = "timeout"
            box.kill()
            code = box.wait()
        finally:
            relay.stop()
        wall = time.monotonic() - started
        sig = -code if code < 0 else None
        stats = box.stats()
        status.event(event="exited", returncode=code, signal=sig, wall_time=round(wall, 6),
                     timed_out=timed_out, reason=box.reason,
                     stats=stats.as_dict() if stats is not None else None)
        if box.reason == "oom":
            from ._spec import format_size

            limit = spec.limits.memory if spec.limits is not None else None
            _err("killed: out of memory" + (f" (limit {format_size(limit)})" if limit else ""))
        elif box.reason == "cpu_time":
            _err(f"killed: CPU time limit ({spec.limits.cpu_time} s)")
        if timed_out:
            return EXIT_TIMEOUT
        return 128 + sig if sig else code
    finally:
        if box is not None:
            box.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


SERVE_DESCRIPTION = """\
Route HTTP requests to sandboxed environments made on demand from the
configuration's template: by the X-Env-Id header, the host name <id>.<domain>,
or the path /env/<id>/ (stripped). A control API under /_nsbox/ (health, envs)
needs the token printed at start (or --token, or NSBOX_SERVE_TOKEN). SIGTERM
or SIGINT: no new connections, requests in flight finish (shutdown_timeout),
every environment stops.
"""


def _serve(argv: list[str]) -> int:
    import argparse

    parser = _strict_parser()(prog="python -m nsbox serve", description=SERVE_DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              allow_abbrev=False)
    parser.add_argument("--config", metavar="FILE", required=True,
                        help="the TOML configuration ([serve] and [template] tables)")
    parser.add_argument("--listen", metavar="ADDR:PORT",
                        help="where to listen (default: serve.listen, else 127.0.0.1:8080; "
                             "port 0 picks a free one)")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", metavar="TOKEN",
                      help="the control API's token (default: serve.token, "
                           "$NSBOX_SERVE_TOKEN, else a new one, printed)")
    auth.add_argument("--no-auth", action="store_true",
                      help="the control API needs no token (anyone who can connect controls it)")
    try:
        args = parser.parse_args(argv)
    except CliError as exc:
        _err(str(exc))
        return EXIT_NSBOX
    import dataclasses
    import secrets

    from ._errors import SpecError
    from ._serve_config import check_token, load_config, parse_listen

    try:
        config = load_config(args.config)
        if args.listen is not None:
            config = dataclasses.replace(config, listen=parse_listen(args.listen))
        token = args.token or config.token or os.environ.get("NSBOX_SERVE_TOKEN")
        if token is not None:
            token = check_token(token)
    except SpecError as exc:
        _err(str(exc))
        return EXIT_NSBOX
    from . import _serve

    if args.no_auth or not config.auth:
        token = None
    elif token is None:
        token = secrets.token_urlsafe(24)
        _serve.log(f"control API token: {token}")

    def ready(addr: str, port: int) -> None:
        shown = f"[{addr}]" if ":" in addr else addr
        _serve.log(f"listening on http://{shown}:{port}/ (routing by X-Env-Id, "
             f"<id>.{config.domain}, /env/<id>/; control API at /_nsbox/"
             f"{'' if token else ', no token'})")

    try:
        _serve.main(config, token=token, ready=ready)
    except OSError as exc:
        _err(f"serve: cannot listen on {config.listen[0]}:{config.listen[1]}: "
             f"{exc.strerror or exc}")
        return EXIT_NSBOX
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        build_parser().print_usage(sys.stderr)
        _err("no command given (try: python -m nsbox run --help)")
        return EXIT_NSBOX
    if argv[0] in ("-h", "--help"):
        try:
            build_parser().parse_args(argv)
        except CliError as exc:
            _err(str(exc))
            return EXIT_NSBOX
        except SystemExit as exc:
            return int(exc.code or 0)
        return EXIT_NSBOX
    if argv[0] == "bench":
        from .bench import main as bench_main

        try:
            return bench_main(argv[1:])
        except SystemExit as exc:  # argparse: --help, or a usage error
            return int(exc.code) if isinstance(exc.code, int) else EXIT_NSBOX
        except KeyboardInterrupt:
            return 128 + signal.SIGINT
    if argv[0] == "serve":
        try:
            return _serve(argv[1:])
        except SystemExit as exc:  # --help
            return int(exc.code) if isinstance(exc.code, int) else EXIT_NSBOX
    if argv[0] != "run":
        _err(f"unknown command {argv[0]!r} (try: python -m nsbox run --help, "
             "python -m nsbox serve --help, python -m nsbox bench --help)")
        return EXIT_NSBOX
    try:
        return _run(argv[1:])
    except SystemExit as exc:  # --help inside run
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_NSBOX
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as exc:  # a bug: still one line, still 125
        _err(f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_NSBOX
