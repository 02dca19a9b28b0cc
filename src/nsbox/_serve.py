"""`nsbox serve`: an HTTP router in front of sandboxed environments, made on demand.

One trio process: a supervisor (nsbox._supervisor) holds the environments, each
a sandbox of the configuration's template on the template's network, named by
its id (so environments resolve each other by id); the router parses HTTP with
h11 (the only h11 user) and forwards each request to the environment its
X-Env-Id header, its host name <id>.<domain> or its path /env/<id>/ names,
through a socket made inside the network by the network's hub (so nothing of
the host's network is touched and unprivileged callers get the same).

Guarantees: an id is created once however many first requests race for it; at
most max_envs environments (more: 503 with Retry-After); idle ones stop after
idle_timeout; SIGTERM stops accepting, lets in-flight requests finish up to
shutdown_timeout, then stops every environment (the supervisor's exit kills and
reaps them).
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import math
import secrets
import select
import signal
import sys
import time

import h11
import trio

from . import _errors
from ._process import DEVNULL, PIPE, STDOUT
from ._serve_config import OVERRIDE_KEYS, ServeConfig, Template, check_id, make_template, route
from ._supervisor import open_supervisor

MAX_HEAD = 32 * 1024          # request/response head bytes: more is a 431 / 502
MAX_CONTROL_BODY = 1 << 20    # the control API's JSON bodies
IDLE_UPSTREAMS = 32           # idle keep-alive connections kept per environment
SPARE_DELAY = 0.05            # after a spare is taken, before its replacement starts
FAST_WINDOW = 0.02            # a response head within this: no second task for the exchange
CHUNK = 64 * 1024
FORWARDED = {b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto"}
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
              b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization"}


class Full(Exception):
    """max_envs environments exist: a 503 with Retry-After."""


class EnvFailed(Exception):
    """The environment could not be made ready (setup failed, exited, not ready in time)."""


@dataclasses.dataclass(eq=False)
class Env:
    id: str
    template: Template
    created: float = dataclasses.field(default_factory=time.time)
    state: str = "starting"  # starting -> ready -> stopping -> stopped; or failed
    box: object = None
    error: str | None = None
    ready: trio.Event = dataclasses.field(default_factory=trio.Event)
    last_request: float | None = None      # wall clock, for the API
    last_active: float = dataclasses.field(default_factory=time.monotonic)
    inflight: int = 0
    requests: int = 0
    idle: list = dataclasses.field(default_factory=list)  # (stream, h11.Connection)
    splices: set = dataclasses.field(default_factory=set)  # upgraded connections' scopes
    ready_time: float | None = None
    full: bool = False  # it could not start: the machine's limits (a 503)

    def describe(self) -> dict:
        now = time.time()
        out = {"id": self.id, "state": self.state, "created": self.created,
               "age": round(now - self.created, 3),
               "last_request": self.last_request,
               "idle": round(time.monotonic() - self.last_active, 3),
               "requests": self.requests, "inflight": self.inflight,
               "port": self.template.port, "address": None, "pid": None,
               "ready_time": self.ready_time, "error": self.error}
        box = self.box
        if box is not None:
            out["pid"] = box.pid
            out["address"] = str(box.address) if box.address is not None else None
            try:
                st = box.stats()
                out["stats"] = {k: getattr(st, k) for k in type(st).__slots__}
            except (OSError, _errors.NsboxError):  # ended meanwhile
                out["stats"] = None
        return out


def log(msg: str) -> None:
    try:
        sys.stderr.write(f"nsbox serve: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _json(status: int, body: object, extra: list | None = None) -> tuple[int, list, bytes]:
    data = json.dumps(body, default=str).encode() + b"\n"
    return status, [(b"content-type", b"application/json"), *(extra or [])], data


def _error(status: int, message: str, extra: list | None = None) -> tuple[int, list, bytes]:
    return _json(status, {"error": message, "status": status}, extra)


def _header(headers, name: bytes) -> str | None:
    for k, v in headers:
        if k == name:
            return v.decode("latin-1")
    return None


def _connection_tokens(headers) -> set[bytes]:
    out: set[bytes] = set()
    for k, v in headers:
        if k == b"connection":
            out.update(t.strip().lower() for t in v.split(b","))
    return out


def _peer_closed(stream: trio.SocketStream) -> bool:
    """An idle keep-alive upstream that is readable has closed (or broke the protocol)."""
    try:
        p = select.poll()
        p.register(stream.socket.fileno(), select.POLLIN | select.POLLRDHUP | select.POLLERR)
        return bool(p.poll(0))
    except (OSError, ValueError):
        return True


class Router:
    """The environments and the requests: one per `nsbox serve` process."""

    def __init__(self, config: ServeConfig, sup, nursery: trio.Nursery, token: str | None):
        self.config = config
        self.sup = sup
        self.nursery = nursery
        self.token = token
        self.envs: dict[str, Env] = {}
        self.exchanges = 0            # requests being handled
        self.shutting_down = False
        self.idle_scopes: set[trio.CancelScope] = set()
        self.drained = trio.Event()
        self.spares: list[Env] = []   # ready, unnamed (a placeholder name), for new ids
        self.spares_starting = 0
        self.want_spares = trio.Event()

    # -- environments --------------------------------------------------------------------

    def live(self) -> int:
        return sum(1 for e in self.envs.values() if e.state in ("starting", "ready"))

    async def get_env(self, env_id: str, overrides: dict | None = None) -> Env:
        """The environment `env_id`, made (once, however many ask at once) if it
        does not exist; returns when it is ready."""
        env = self.envs.get(env_id)
        if env is not None and env.state not in ("starting", "ready"):
            env = None  # it is ending: a new one is made
        if env is None:
            if self.shutting_down:
                raise Full("the router is shutting down")
            live = self.live()
            if live >= self.config.max_envs:
                raise Full(f"{live} environments exist, the maximum (serve.max_envs)")
            env = None if overrides else self._take_spare(env_id)
            if env is None:
                template = self.config.template if not overrides else \
                    make_template(self.config.template.table, overrides)
                env = Env(env_id, template)
                self.envs[env_id] = env
                self.nursery.start_soon(self._run_env, env, name=f"nsbox-serve-env-{env_id}")
        await env.ready.wait()
        if env.full:
            raise Full(env.error)
        if env.state != "ready":
            raise EnvFailed(env.error or f"environment {env_id} is {env.state}")
        return env

    def _take_spare(self, env_id: str) -> Env | None:
        """A ready spare, renamed `env_id` on the network (no await: atomic)."""
        while self.spares:
            env = self.spares.pop()
            self.want_spares.set()
            if env.state != "ready":
                continue
            try:
                env.box.rename(env_id)
            except (_errors.NsboxError, OSError, ValueError) as exc:
                log(f"{env.id}: cannot take it as {env_id} ({exc}); stopping it")
                self.nursery.start_soon(self.stop_env, env, "not renamed")
                continue
            log(f"{env_id}: from spare {env.id} (pid {env.box.pid}, {env.box.address}:"
                f"{env.template.port})")
            env.id = env_id
            env.last_active = time.monotonic()
            self.envs[env_id] = env
            return env
        return None

    async def keep_spares(self) -> None:
        """Keep serve.spares environments of the template started and ready,
        one start at a time (a refill never competes with many requests at once)."""
        want = self.config.spares
        while want:
            while len(self.spares) + self.spares_starting < want and not self.shutting_down:
                env = Env(f"nsbx-spare-{secrets.token_hex(4)}", self.config.template)
                self.spares_starting += 1
                try:
                    self.nursery.start_soon(self._run_env, env, name=f"nsbox-serve-{env.id}")
                    await env.ready.wait()
                finally:
                    self.spares_starting -= 1
                if env.state == "ready":
                    self.spares.append(env)
                elif env.state == "failed":
                    await trio.sleep(1)  # a template that fails: do not spin
            self.want_spares = trio.Event()
            await self.want_spares.wait()
            await trio.sleep(SPARE_DELAY)  # the taken one answers its first request first

    async def _run_env(self, env: Env) -> None:
        """Start the environment, wait until it is ready, relay its output, and
        forget it when it ends, however it ends."""
        t0 = time.monotonic()
        try:
            spec = env.template.spec.replace(name=env.id)
            try:
                env.box = await self.sup.start(spec, wait=False, stdin=DEVNULL, stdout=PIPE,
                                               stderr=STDOUT)
            except _errors.CapacityError as exc:  # the machine's limits: a 503, not a hang
                env.full = True
                raise EnvFailed(f"environment {env.id} cannot start now: {exc}") from None
            except (_errors.NsboxError, OSError) as exc:
                raise EnvFailed(f"environment {env.id} failed to start: {exc}") from None
            box = env.box
            failure = None
            async with trio.open_nursery() as n:  # nothing raises in here: no group
                n.start_soon(self._relay_output, env, box)
                try:
                    with trio.fail_after(self.config.ready_timeout):
                        await self._wait_ready(env, box)
                except trio.TooSlowError:
                    failure = (f"environment {env.id} was not ready within "
                               f"{self.config.ready_timeout:g} s")
                except EnvFailed as exc:
                    failure = str(exc)
                if failure is None:
                    if env.state == "starting":
                        env.state = "ready"
                    env.ready_time = round(time.monotonic() - t0, 4)
                    env.last_active = time.monotonic()
                    env.ready.set()
                    log(f"{env.id}: ready in {env.ready_time * 1000:.1f} ms "
                        f"(pid {box.pid}, {box.address}:{env.template.port})")
                    result = await box.wait()
                    if env.state == "ready":
                        log(f"{env.id}: ended by itself ({result.reason}, status "
                            f"{result.returncode})")
                else:
                    await box.kill()  # the relay ends with its output
            if failure is not None:
                raise EnvFailed(failure)
        except EnvFailed as exc:
            env.state, env.error = "failed", str(exc)
            log(str(exc))
        except Exception as exc:  # a bug of ours: this environment fails, not the router
            env.state, env.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
            log(f"{env.id}: {env.error}")
        finally:
            with trio.CancelScope(shield=True):
                if env.state in ("starting", "ready"):
                    env.state = "stopping"
                env.ready.set()
                if self.envs.get(env.id) is env:
                    del self.envs[env.id]
                if env in self.spares:
                    self.spares.remove(env)
                    self.want_spares.set()
                for stream, _ in env.idle:
                    stream.socket.close()
                env.idle.clear()
                if env.box is not None:
                    await env.box.aclose()  # kills (with the grace) if it still runs
                if env.state != "failed":
                    env.state = "stopped"

    async def _relay_output(self, env: Env, box) -> None:
        """The environment's stdout and stderr, line by line, prefixed by its id."""
        buf = b""
        try:
            while True:
                data = await box.stdout.receive_some(CHUNK)
                if not data:
                    break
                *lines, buf = (buf + data).split(b"\n")
                if len(buf) > 8192:
                    lines.append(buf)
                    buf = b""
                for line in lines:
                    log(f"{env.id} | {line.decode(errors='replace')}")
        except (trio.ClosedResourceError, trio.BrokenResourceError, OSError):
            pass
        if buf:
            log(f"{env.id} | {buf.decode(errors='replace')}")

    async def _wait_ready(self, env: Env, box) -> None:
        delay = 0.0005
        while True:
            if box.returncode is not None:
                raise EnvFailed(f"environment {env.id} exited before it was ready "
                                f"({box.reason}, status {box.returncode})")
            try:
                stream = await box.connect(env.template.port)
            except OSError:
                stream = None
            if stream is not None:
                try:
                    if env.template.ready.http is None:
                        return
                    status = await _probe_http(stream, env.template.ready.http, env.id)
                    if status is not None and 200 <= status < 300:
                        return
                except (OSError, trio.BrokenResourceError, h11.ProtocolError):
                    pass
                finally:
                    await stream.aclose()
            await trio.sleep(delay)
            delay = min(delay * 2, 0.005)

    async def stop_env(self, env: Env, why: str) -> None:
        """Stop an environment (forgotten at once: a new request makes a new one)."""
        if env.state not in ("starting", "ready"):
            return
        log(f"{env.id}: stopping ({why})")
        env.state = "stopping"
        if self.envs.get(env.id) is env:
            del self.envs[env.id]
        if env.box is not None:
            try:  # the id is free at once: a new environment may take it meanwhile
                env.box.rename(None)
            except (_errors.NsboxError, OSError, ValueError):
                pass
            await env.box.kill()
        # Upgraded connections (websockets) end with it: one whose client reads
        # nothing would never see the environment's side close.
        for scope in list(env.splices):
            scope.cancel()

    async def reap_idle(self) -> None:
        idle = self.config.idle_timeout
        if idle <= 0:
            return
        while True:
            await trio.sleep(min(max(idle / 4, 0.05), 1.0))
            now = time.monotonic()
            for env in list(self.envs.values()):
                if env.state == "ready" and env.inflight == 0 and now - env.last_active >= idle:
                    self.nursery.start_soon(self.stop_env, env, "idle")

    # -- upstream connections -------------------------------------------------------------

    async def upstream(self, env: Env, fresh: bool = False
                       ) -> tuple[trio.SocketStream, h11.Connection, bool]:
        """A connection to the environment's port: (stream, h11 client, reused)."""
        while env.idle and not fresh:
            stream, conn = env.idle.pop()
            if not _peer_closed(stream):
                return stream, conn, True
            stream.socket.close()
        stream = await env.box.connect(env.template.port)
        stream.socket.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
        return stream, h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD), False

    def give_back(self, env: Env, stream, conn: h11.Connection) -> None:
        # Not with bytes past the response's end (a body on a 204 or a HEAD
        # response): they would be taken for the next request's response.
        if (conn.our_state is h11.DONE and conn.their_state is h11.DONE
                and not conn.trailing_data[0]
                and env.state == "ready" and len(env.idle) < IDLE_UPSTREAMS):
            conn.start_next_cycle()
            env.idle.append((stream, conn))
        else:
            stream.socket.close()

    # -- client connections -----------------------------------------------------------------

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            stream.socket.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
            peer = stream.socket.getpeername()
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        client = _Client(self, stream, peer[0] if isinstance(peer, tuple) else "unix")
        try:
            await client.serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception as exc:  # a bug of ours: this connection ends, not the router
            log(f"{client.peer}: internal error: {type(exc).__name__}: {exc}")
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    # -- the control API --------------------------------------------------------------------

    def authorized(self, headers) -> bool:
        if self.token is None:
            return True
        given = _header(headers, b"authorization")
        if given is not None and given[:7].lower() == "bearer ":
            given = given[7:].strip()
        else:
            given = _header(headers, b"x-nsbox-token")
        return given is not None and hmac.compare_digest(given.encode("latin-1"),
                                                         self.token.encode())

    async def control(self, method: str, path: str, headers, body: bytes):
        """(status, headers, body) for a request under /_nsbox/."""
        if not self.authorized(headers):
            return _error(401, "the control API needs the token (Authorization: Bearer ...)",
                          [(b"www-authenticate", b'Bearer realm="nsbox"')])
        path = path.partition("?")[0]
        parts = [p for p in path.split("/") if p]
        if parts == ["health"]:
            if method not in ("GET", "HEAD"):
                return _error(405, "health takes GET", [(b"allow", b"GET, HEAD")])
            return _json(200, {"status": "stopping" if self.shutting_down else "ok",
                               "envs": self.live(), "max_envs": self.config.max_envs,
                               "spares": len(self.spares),
                               "requests_in_flight": self.exchanges})
        if parts == ["envs"]:
            if method in ("GET", "HEAD"):
                return _json(200, {"envs": [e.describe() for e in list(self.envs.values())]})
            if method != "POST":
                return _error(405, "envs takes GET or POST", [(b"allow", b"GET, HEAD, POST")])
            try:
                req = json.loads(body or b"{}")
                if not isinstance(req, dict):
                    raise ValueError("the body must be a JSON object")
                env_id = check_id(req.pop("id")) if "id" in req else secrets.token_hex(6)
                unknown = req.keys() - OVERRIDE_KEYS
                if unknown:
                    raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))} "
                                     f"(allowed: id, {', '.join(sorted(OVERRIDE_KEYS))})")
                overrides = req or None
                if overrides:
                    make_template(self.config.template.table, overrides)  # 400, not 502
            except (ValueError, _errors.SpecError) as exc:
                return _error(400, str(exc))
            existing = self.envs.get(env_id)
            if existing is not None and existing.state in ("starting", "ready"):
                return _error(409, f"environment {env_id} exists")
            try:
                env = await self.get_env(env_id, overrides)
            except Full as exc:
                return _error(503, str(exc), [(b"retry-after", b"5")])
            except EnvFailed as exc:
                return _error(502, str(exc))
            return _json(201, env.describe(),
                         [(b"location", f"/_nsbox/envs/{env_id}".encode())])
        if len(parts) == 2 and parts[0] == "envs":
            env = self.envs.get(parts[1])
            if env is None:
                return _error(404, f"no environment {parts[1][:64]!r}")
            if method in ("GET", "HEAD"):
                return _json(200, env.describe())
            if method == "DELETE":
                await self.stop_env(env, "deleted")
                return _json(200, {"deleted": env.id})
            return _error(405, "an environment takes GET or DELETE",
                          [(b"allow", b"GET, HEAD, DELETE")])
        return _error(404, f"no such control endpoint: {path[:200]}")


class _Client:
    """One client connection: its requests in order (HTTP/1.1 keep-alive)."""

    def __init__(self, router: Router, stream: trio.SocketStream, peer: str):
        self.r = router
        self.stream = stream
        self.peer = peer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.send_lock = trio.Lock()

    async def receive(self) -> bytes:
        return await self.stream.receive_some(CHUNK)

    async def next_event(self):
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.receive())

    async def send(self, event) -> None:
        data = self.conn.send(event)
        if data:
            async with self.send_lock:
                await self.stream.send_all(data)

    async def simple(self, status: int, headers: list, body: bytes, close: bool = False,
                     head: bool = False) -> int:
        """A whole response of ours; the body bytes sent (for the log). To a HEAD
        request (`head`): the headers GET would get, Content-Length too, no body."""
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        if close or self.r.shutting_down:
            headers.append((b"connection", b"close"))
        await self.send(h11.Response(status_code=status, headers=headers))
        if self.conn.our_state is not h11.SEND_BODY:
            return 0
        if body and not head:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())
        return 0 if head else len(body)

    async def fail(self, status: int, message: str, extra: list | None = None) -> int:
        """An error response, if none has begun; the connection closes after it.
        The body bytes sent."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                return await self.simple(*_error(status, message, extra), close=True)
            except (h11.LocalProtocolError, trio.BrokenResourceError, OSError):
                pass
        return 0

    async def serve(self) -> None:
        while True:
            # One scope per request: idle between requests (the keep-alive
            # timeout; cancelled at shutdown), then from its first byte the
            # head timeout (and no longer cancelled at shutdown).
            config = self.r.config
            idle = not self.conn.trailing_data[0]
            scope = trio.CancelScope(deadline=trio.current_time() + (
                config.keepalive_timeout if idle else config.header_timeout))
            if idle:
                self.r.idle_scopes.add(scope)
                if self.r.shutting_down:
                    scope.cancel()
            event = None
            try:
                with scope:
                    while True:
                        event = self.conn.next_event()
                        if event is not h11.NEED_DATA:
                            break
                        data = await self.receive()
                        if idle and data:
                            idle = False
                            self.r.idle_scopes.discard(scope)
                            scope.deadline = trio.current_time() + config.header_timeout
                        self.conn.receive_data(data)
            except h11.RemoteProtocolError as exc:
                await self.fail(exc.error_status_hint, f"bad request: {exc}")
                return
            finally:
                self.r.idle_scopes.discard(scope)
            if scope.cancelled_caught:
                if not idle:
                    await self.fail(408, "the request head did not arrive in time")
                return
            if not isinstance(event, h11.Request):  # ConnectionClosed
                return
            if len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers) \
                    > MAX_HEAD:  # h11 bounds only heads that arrive in pieces
                await self.fail(431, f"the request head is over {MAX_HEAD} bytes")
                return
            self.r.exchanges += 1
            try:
                keep = await self.exchange(event)
            finally:
                self.r.exchanges -= 1
                if self.r.exchanges == 0 and self.r.shutting_down:
                    self.r.drained.set()
            if not keep or self.r.shutting_down:
                return
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    async def read_body(self, limit: int) -> bytes | None:
        body = bytearray()
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    return None
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise trio.BrokenResourceError("the client closed mid-request")

    async def exchange(self, req: h11.Request) -> bool:
        """Handle one request and log it; False: close the connection."""
        t0 = time.monotonic()
        method = req.method.decode("ascii", "replace")
        target = req.target.decode("latin-1")
        rt = route(target, _header(req.headers, b"x-env-id"), _header(req.headers, b"host"),
                   self.r.config.domain)
        status, sent = 0, 0
        try:
            if _header(req.headers, b"transfer-encoding") is not None and \
                    _header(req.headers, b"content-length") is not None:
                # Framed two ways: a request smuggling attempt, or a broken client
                # (RFC 9112 6.3; nginx refuses these too).
                status = 400
                sent = await self.fail(400, "bad request: both Transfer-Encoding and "
                                            "Content-Length")
                return False
            if rt.kind == "control":
                if self.conn.they_are_waiting_for_100_continue:
                    # Expect: 100-continue: refused at once without the token
                    # (the body is never read), else asked for.
                    if not self.r.authorized(req.headers):
                        status, headers, data = await self.r.control(method, rt.target,
                                                                     req.headers, b"")
                        sent = await self.simple(status, headers, data, close=True)
                        return False
                    await self.send(h11.InformationalResponse(status_code=100, headers=[]))
                body = await self.read_body(MAX_CONTROL_BODY)
                if body is None:
                    status = 413
                    sent = await self.fail(413, "control API bodies are at most 1 MiB")
                    return False
                status, headers, data = await self.r.control(method, rt.target, req.headers,
                                                             body)
                sent = await self.simple(status, headers, data, head=method == "HEAD")
                return True
            if rt.kind != "env":
                status = 400 if rt.kind == "bad" else 404
                sent = await self.fail(status, rt.error if rt.kind == "bad" else (
                    "no environment named: use the X-Env-Id header, the host name "
                    f"<id>.{self.r.config.domain} or the path /env/<id>/"))
                return False
            try:
                env = await self.r.get_env(rt.id)
            except Full as exc:
                status = 503
                sent = await self.fail(503, str(exc), [(b"retry-after", b"5")])
                return False
            except EnvFailed as exc:
                status = 502
                sent = await self.fail(502, str(exc))
                return False
            env.inflight += 1
            env.requests += 1
            env.last_request = time.time()
            try:
                status, sent, keep = await self.forward(env, req, rt.target)
            finally:
                env.inflight -= 1
                env.last_active = time.monotonic()
            return keep
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            sent = await self.fail(status, f"bad request: {exc}")
            return False
        finally:
            ms = (time.monotonic() - t0) * 1000
            log(f"{self.peer} {rt.id or '-'} {method} {target[:200]} {status or '-'} "
                 f"{sent} {ms:.1f}ms")

    async def forward(self, env: Env, req: h11.Request, target: str) -> tuple[int, int, bool]:
        """Forward one request to the environment and its response back:
        (status, body bytes sent to the client, keep the client connection)."""
        tokens = _connection_tokens(req.headers)
        upgrade = _header(req.headers, b"upgrade") if b"upgrade" in tokens else None
        # X-Forwarded-For: appended to (as nginx's $proxy_add_x_forwarded_for);
        # -Host and -Proto: ours, replacing what the client said.
        drop = HOP_BY_HOP | tokens | FORWARDED | {b"expect"}
        headers = [(k, v) for k, v in req.headers if k not in drop]
        xff = [v for k, v in req.headers if k == b"x-forwarded-for"]
        host = _header(req.headers, b"host")
        if host is None:  # HTTP/1.0
            headers.append((b"host", env.id.encode()))
        headers += [(b"x-forwarded-for", b", ".join([*xff, self.peer.encode()])),
                    (b"x-forwarded-host", (host or env.id).encode("latin-1")),
                    (b"x-forwarded-proto", b"http")]
        if _header(req.headers, b"transfer-encoding") is not None:
            headers.append((b"transfer-encoding", b"chunked"))
        if upgrade is not None:
            headers += [(b"connection", b"upgrade"), (b"upgrade", upgrade.encode("latin-1"))]
        out = h11.Request(method=req.method, target=target.encode("latin-1"), headers=headers)
        replay = None
        for fresh in (False, True):
            try:
                up, uconn, reused = await self.r.upstream(env, fresh=fresh)
            except OSError as exc:
                    return 502, await self.fail(502, f"environment {env.id} refused the "
                                                 f"connection ({exc.strerror or exc})"), False
            x = _Exchange(self, env, up, uconn, out, reused, replay)
            result = await x.run()
            if result is not None:
                return result
            replay = x.recorded  # a kept-alive connection it had closed: once more, fresh
        raise AssertionError("unreachable")  # pragma: no cover


class _Exchange:
    """One request and its response, between a client connection and an
    upstream one.

    The fast path (a request without a body, answered within FAST_WINDOW, as
    most are): one task sends the request and relays the response. Otherwise
    two tasks: the request (head, body, then watching the client for a
    disconnect, which cancels the exchange) and the response; either ends the
    other. Failures are recorded, not raised, so no nursery wraps them."""

    def __init__(self, client: _Client, env: Env, up: trio.SocketStream, uconn: h11.Connection,
                 req: h11.Request, reused: bool, replay: list | None):
        self.c = client
        self.env = env
        self.up = up
        self.uconn = uconn
        self.req = req
        self.reused = reused
        self.replay = replay or []
        self.recorded: list | None = list(self.replay)  # None once too big to replay
        self.failure: tuple[str, str] | None = None
        self.status = 0
        self.sent = 0
        self.response_started = False
        self.request_sent = False
        self.request_done = trio.Event()
        self.request_end: float | None = None  # when the whole request was sent upstream
        self.head_wait: trio.CancelScope | None = None  # the wait for the response head
        self.body_send: trio.CancelScope | None = None  # a send of the request body upstream
        self.scope: trio.CancelScope | None = None
        self.out = bytearray()  # bytes for the client, sent before we wait for more

    def fail(self, kind: str, message: str = "") -> None:
        if self.failure is None:
            self.failure = (kind, message)
        if self.scope is not None:
            self.scope.cancel()

    def _bodyless(self) -> bool:
        conn = self.c.conn  # the client's side, as h11 read the request
        if conn.their_state is not h11.SEND_BODY or conn.they_are_waiting_for_100_continue:
            return False
        if any(k in (b"transfer-encoding", b"upgrade") for k, _ in self.req.headers):
            return False
        length = _header(self.req.headers, b"content-length")
        return length is None or length.strip() == "0"

    async def run(self) -> tuple[int, int, bool] | None:
        """(status, bytes, keep), or None: retry on a fresh connection."""
        c = self.c
        if not self.replay and self._bodyless():
            event = c.conn.next_event()  # the request's end: no I/O for a bodyless request
            if isinstance(event, h11.EndOfMessage):
                self.recorded.append(event)
                try:
                    await self.usend(self.req)
                    await self.usend(event)
                    self.request_sent = True
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self.fail("upstream", f"the connection broke ({exc})")
                self.request_done.set()
                first = None
                if self.failure is None:
                    self.request_end = trio.current_time()
                    # A shorter upstream_timeout ends in the wait below, at once.
                    with trio.move_on_after(FAST_WINDOW):
                        first = await self._first_event()
                if first is not None:
                    await self.pump_response(first)
                if first is not None or self.failure is not None:
                    return await self.outcome()
        async with trio.open_nursery() as n:
            self.scope = n.cancel_scope
            n.start_soon(self.pump_request)
            n.start_soon(self.pump_response, None)
        return await self.outcome()

    async def outcome(self) -> tuple[int, int, bool] | None:
        c = self.c
        if self.failure is None and self.status != 101:
            c.r.give_back(self.env, self.up, self.uconn)
            keep = c.conn.our_state is h11.DONE and c.conn.their_state is h11.DONE
            return self.status, self.sent, keep
        self.up.socket.close()
        if self.failure is None:  # the end of a switched (upgraded) connection
            return 101, self.sent, False
        kind, message = self.failure
        if self.response_started:
            return self.status, self.sent, False
        if kind == "upstream" and self.reused and self.recorded is not None:
            return None
        config = c.r.config
        status, text = {
            "upstream": (502, f"environment {self.env.id}: {message}"),
            "bad-response": (502, f"environment {self.env.id}: {message}"),
            "timeout": (504, f"environment {self.env.id} did not answer within "
                             f"{config.upstream_timeout:g} s"),
            "bad-request": (400, f"bad request: {message}"),
            "client-timeout": (408, f"the request body sent nothing for "
                                    f"{config.body_timeout:g} s"),
        }.get(kind, (499, None))  # "client": it went away (nginx's 499), nobody to tell
        return status, await c.fail(status, text) if text is not None else 0, False

    async def usend(self, event) -> None:
        data = self.uconn.send(event)
        if data:
            await self.up.send_all(data)

    async def pump_request(self) -> None:
        c = self.c
        try:
            if not self.request_sent:
                await self.usend(self.req)
                done = False
                for event in self.replay:
                    await self.usend(event)
                    done = isinstance(event, h11.EndOfMessage)
                if not done and c.conn.they_are_waiting_for_100_continue:
                    await c.send(h11.InformationalResponse(status_code=100, headers=[]))
                while not done:
                    try:
                        with trio.fail_after(c.r.config.body_timeout):
                            event = await c.next_event()
                    except trio.TooSlowError:
                        return self.fail("client-timeout")
                    except h11.RemoteProtocolError as exc:
                        return self.fail("bad-request", str(exc))
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        return self.fail("client")
                    if isinstance(event, h11.ConnectionClosed):
                        return self.fail("client")
                    if self.recorded is not None:
                        self.recorded.append(event)
                        if sum(len(e.data) for e in self.recorded
                               if isinstance(e, h11.Data)) > CHUNK:
                            self.recorded = None
                    # An environment that takes none of the body for upstream_timeout,
                    # and has not answered: a 504 (once it answers, its pace is its own).
                    with trio.CancelScope(deadline=math.inf if self.response_started else
                                          trio.current_time() + c.r.config.upstream_timeout
                                          ) as send:
                        self.body_send = send
                        await self.usend(event)
                    self.body_send = None
                    if send.cancelled_caught:
                        return self.fail("timeout")
                    done = isinstance(event, h11.EndOfMessage)
                self.request_sent = True
                self.request_end = trio.current_time()
                self._arm_head_wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            return self.fail("upstream", f"the connection broke ({exc})")
        finally:
            self.request_done.set()
        if c.conn.their_state is h11.MIGHT_SWITCH_PROTOCOL:
            return  # the response decides; the splice reads the client from here
        # The request is in: a client that goes away now cancels the exchange. A
        # pipelined request's bytes are kept (h11 holds them for the next cycle).
        while len(c.conn.trailing_data[0]) <= MAX_HEAD:
            try:
                data = await c.receive()
            except (trio.BrokenResourceError, OSError):
                data = b""
            if not data:
                return self.fail("client")
            c.conn.receive_data(data)
        await trio.sleep_forever()

    async def _upstream_event(self):
        while True:
            try:
                event = self.uconn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _BadResponse(f"a bad response ({exc})") from None
            if event is not h11.NEED_DATA:
                return event
            await self.flush()  # what the client has coming, before we wait
            # The head's wait has its own deadline (from the request's end:
            # pump_response); mid-response, silence for upstream_timeout is a failure.
            timeout = self.c.r.config.upstream_timeout if self.response_started else math.inf
            try:
                with trio.fail_after(timeout):
                    # ACK at once: an environment that writes a response's head and
                    # body apart (Nagle on) waits for that ACK, and a delayed one
                    # costs 40 ms per response.
                    self.up.socket.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_QUICKACK, 1)
                    data = await self.up.receive_some(CHUNK)
            except trio.TooSlowError:
                raise _UpstreamError(f"it sent nothing for {self.c.r.config.upstream_timeout:g}"
                                     " s mid-response") from None
            except (trio.BrokenResourceError, OSError) as exc:
                raise _UpstreamError(f"the connection broke ({exc})") from None
            self.uconn.receive_data(data)

    async def _first_event(self):
        """The response head (100 and 103 are not forwarded), or None after a failure."""
        try:
            event = await self._upstream_event()
            while isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                event = await self._upstream_event()
        except _UpstreamError as exc:
            self.fail(_upstream_kind(exc), str(exc))
            return None
        if isinstance(event, h11.ConnectionClosed):
            self.fail("upstream", "it closed the connection without a response")
            return None
        return event

    def _arm_head_wait(self) -> None:
        if self.head_wait is not None and self.request_end is not None:
            self.head_wait.deadline = self.request_end + self.c.r.config.upstream_timeout

    def _response_begins(self) -> None:
        self.response_started = True
        if self.body_send is not None:  # the environment reads at its pace now
            self.body_send.deadline = math.inf

    def queue(self, event) -> None:
        self.out += self.c.conn.send(event)

    async def flush(self) -> None:
        if self.out:
            data, self.out = bytes(self.out), bytearray()
            async with self.c.send_lock:
                await self.c.stream.send_all(data)

    async def pump_response(self, first) -> None:
        c = self.c
        try:
            if first is None:
                # upstream_timeout counts from the request's end (pump_request
                # sets the deadline then): a slow upload is the client's time.
                with trio.CancelScope() as self.head_wait:
                    self._arm_head_wait()
                    first = await self._first_event()
                if self.head_wait.cancelled_caught:
                    return self.fail("timeout")
                if first is None:
                    return self.scope.cancel() if self.scope is not None else None
            event = first
            if _header(event.headers, b"transfer-encoding") is not None and \
                    _header(event.headers, b"content-length") is not None:
                return self.fail("bad-response", "a bad response (both Transfer-Encoding "
                                                 "and Content-Length)")
            self.status = event.status_code
            drop = HOP_BY_HOP | _connection_tokens(event.headers)
            headers = [(k, v) for k, v in event.headers if k not in drop]
            if self.status == 101:
                await self.request_done.wait()
                if c.conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
                    return self.fail("upstream", "it switched protocols unasked")
                headers += [(b"connection", b"upgrade"),
                            (b"upgrade", (_header(event.headers, b"upgrade") or "").encode())]
                await c.send(h11.InformationalResponse(status_code=101, headers=headers))
                self._response_begins()
                await self.splice()
                if self.scope is not None:
                    self.scope.cancel()
                return
            if c.r.shutting_down:
                headers.append((b"connection", b"close"))
            self.queue(h11.Response(status_code=self.status, headers=headers,
                                    reason=event.reason))
            self._response_begins()
            while True:
                event = await self._upstream_event()
                if isinstance(event, h11.Data):
                    self.queue(event)
                    self.sent += len(event.data)
                    if len(self.out) >= CHUNK:
                        await self.flush()
                elif isinstance(event, h11.EndOfMessage):
                    self.queue(h11.EndOfMessage())
                    await self.flush()
                    break
                else:
                    return self.fail("upstream", "it closed the connection mid-response")
            # Complete. If the environment answered before it read the whole
            # request, the request pump stops here and neither side is reused.
            if self.scope is not None:
                self.scope.cancel()
        except _UpstreamError as exc:
            return self.fail(_upstream_kind(exc), str(exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return self.fail("client")

    async def splice(self) -> None:
        """After 101 Switching Protocols: bytes both ways until either side ends."""
        c = self.c

        async def one_way(src, dst, first: bytes, scope: trio.CancelScope, count: bool):
            try:
                if first:
                    await dst.send_all(first)
                while True:
                    data = await src.receive_some(CHUNK)
                    if not data:
                        break
                    await dst.send_all(data)
                    if count:
                        self.sent += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            scope.cancel()

        scope = trio.CancelScope()
        self.env.splices.add(scope)
        if self.env.state not in ("starting", "ready"):  # stopped meanwhile
            scope.cancel()
        try:
            with scope:
                async with trio.open_nursery() as n:
                    n.start_soon(one_way, c.stream, self.up, c.conn.trailing_data[0],
                                 n.cancel_scope, False)
                    n.start_soon(one_way, self.up, c.stream, self.uconn.trailing_data[0],
                                 n.cancel_scope, True)
        finally:
            self.env.splices.discard(scope)


class _UpstreamError(Exception):
    pass


class _BadResponse(_UpstreamError):
    """Not HTTP, or not framed once: a 502, never retried (it would answer the same)."""


def _upstream_kind(exc: _UpstreamError) -> str:
    return "bad-response" if isinstance(exc, _BadResponse) else "upstream"


async def _probe_http(stream, path: str, host: str) -> int | None:
    """The status of GET `path` (readiness), or None if the connection closed."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    await stream.send_all(conn.send(h11.Request(
        method="GET", target=path, headers=[("host", host), ("connection", "close"),
                                            ("user-agent", "nsbox-serve-ready")])))
    await stream.send_all(conn.send(h11.EndOfMessage()))
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(CHUNK))
        elif isinstance(event, h11.Response):
            return event.status_code
        else:
            return None


# -- the process -------------------------------------------------------------------------


async def serve(config: ServeConfig, *, token: str | None, ready=None) -> None:
    """Run the router until SIGTERM or SIGINT. `ready(address, port)` is called
    once it listens. Then: no new connections, idle ones closed, requests in
    flight get shutdown_timeout seconds, and every environment is stopped
    (the supervisor's exit kills and reaps whatever is left). Signals that
    arrive meanwhile are noted, not obeyed: leaving nothing behind comes first."""
    host, port = config.listen
    listeners = await trio.open_tcp_listeners(port, host=host)  # OSError here, unwrapped
    bound = listeners[0].socket.getsockname()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with open_supervisor(grace=config.grace) as sup, \
                trio.open_nursery() as nursery:
            router = Router(config, sup, nursery, token)
            nursery.start_soon(router.reap_idle)
            nursery.start_soon(router.keep_spares)
            async with trio.open_nursery() as handlers:
                accepting = trio.CancelScope()

                async def accept():
                    with accepting:
                        await trio.serve_listeners(router.handle, listeners,
                                                   handler_nursery=handlers)

                handlers.start_soon(accept)
                if ready is not None:
                    ready(bound[0], bound[1])
                async for signum in signals:
                    log(f"{signal.Signals(signum).name}: stopping (no new connections; "
                         f"{router.exchanges} request(s) in flight get "
                         f"{config.shutdown_timeout:g} s)")
                    break

                async def note_signals():
                    async for signum in signals:
                        log(f"{signal.Signals(signum).name}: already stopping")

                nursery.start_soon(note_signals)
                router.shutting_down = True
                accepting.cancel()
                for listener in listeners:
                    await trio.aclose_forcefully(listener)
                for scope in list(router.idle_scopes):
                    scope.cancel()
                with trio.move_on_after(config.shutdown_timeout):
                    if router.exchanges:
                        await router.drained.wait()
                handlers.cancel_scope.cancel()
            log(f"stopping {router.live()} environment(s)")
            nursery.cancel_scope.cancel()
    log("stopped")


def main(config: ServeConfig, *, token: str | None, ready=None) -> None:
    """`python -m nsbox serve`: serve() in a trio event loop of its own."""
    trio.run(lambda: serve(config, token=token, ready=ready))
