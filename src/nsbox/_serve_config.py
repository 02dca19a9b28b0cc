"""`nsbox serve`'s configuration and request routing (pure: no I/O but reading the file).

A configuration is TOML (read with tomllib):

    [serve]
    listen = "127.0.0.1:8080"   # loopback by default
    domain = "localhost"        # <id>.localhost routes to environment <id>
    idle_timeout = 300          # seconds without a request before an environment stops (0: never)
    max_envs = 50               # more: 503 with Retry-After
    token = "..."               # the control API's token (default: generated, printed)
    auth = true                 # false: the control API needs no token (explicitly)
    upstream_timeout = 30       # seconds for an environment's response head (504), or
                                # between pieces of its body (the connection is cut)
    ready_timeout = 30          # seconds for a new environment to become ready
    grace = 1.0                 # SIGTERM -> SIGKILL when an environment stops
    shutdown_timeout = 10       # SIGTERM: seconds in-flight requests get to finish
    header_timeout = 10         # a request's head must arrive within this (slowloris)
    body_timeout = 60           # a request body that sends nothing for this long: 408
    keepalive_timeout = 75      # an idle client connection is closed after this
    spares = 0                  # environments kept started and ready for new ids (a warm pool)

    [template]
    command = ["python3", "-m", "http.server", "8000"]
    port = 8000                 # the port it listens on inside
    network = "serve"           # environments resolve each other by id on it
    env = { KEY = "value" }     # added to a clean base environment (PATH, HOME=/root, LANG)
    cwd = "/srv"
    rootfs = "/srv/rootfs"
    mounts = [{ bind = "/srv/app", target = "/app", readonly = true },
              { tmpfs = "/data", size = "64M" }]
    limits = { memory = "256M", pids = 64 }
    ready = { tcp = true } | { http = "/healthz" }    # default: tcp

Everything is validated when loaded (nsbox.SpecError naming the key), so a bad
file fails at start-up, never at the first request.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping

from . import _spec
from ._errors import SpecError

RESERVED_PREFIX = "/_nsbox/"
ID_MAX = _spec.NAME_MAX
DEFAULT_LISTEN = ("127.0.0.1", 8080)
DEFAULT_NETWORK = "serve"
# The environment a template starts from (not the router's own: nothing of the
# caller's environment leaks into environments unless the template says so).
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8"}

_SERVE_KEYS = {"listen", "domain", "idle_timeout", "max_envs", "token", "auth",
               "upstream_timeout", "ready_timeout", "grace", "shutdown_timeout",
               "header_timeout", "keepalive_timeout", "spares", "body_timeout"}
_TEMPLATE_KEYS = {"command", "port", "network", "env", "cwd", "rootfs", "mounts", "limits",
                  "ready", "hostname", "uid", "gid"}
# What a create request of the control API may change per environment.
OVERRIDE_KEYS = {"command", "env", "cwd", "limits", "port", "ready"}
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")


@dataclasses.dataclass(frozen=True)
class Ready:
    """How to tell an environment is ready: its port accepts (http None), or
    GET `http` answers 2xx."""

    http: str | None = None


@dataclasses.dataclass(frozen=True)
class Template:
    spec: _spec.Spec  # args, env, mounts, ...; name is set per environment
    port: int
    ready: Ready
    table: Mapping = dataclasses.field(compare=False, repr=False)  # as read: overrides start here


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    template: Template
    listen: tuple[str, int] = DEFAULT_LISTEN
    domain: str = "localhost"
    idle_timeout: float = 300.0
    max_envs: int = 50
    token: str | None = None  # None with auth: generated at start
    auth: bool = True
    upstream_timeout: float = 30.0
    ready_timeout: float = 30.0
    grace: float = 1.0
    shutdown_timeout: float = 10.0
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    spares: int = 0


def check_id(value: object) -> str:
    """An environment id: one lower-case DNS label (it is the environment's name
    on its network), at most 32 characters."""
    return _spec.check_name(value, "environment id")


def _seconds(value: object, what: str, *, zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{what} must be a number of seconds, not {value!r}")
    if isinstance(value, int) and not -10**7 < value < 10**7:  # float() would overflow
        raise SpecError(f"{what} must be under 10000000 seconds: {str(value)[:40]}")
    v = float(value)
    if not (v >= 0 and v < 10**7) or (v == 0 and not zero):
        raise SpecError(f"{what} must be {'non-negative' if zero else 'positive'} "
                        f"(and finite): {value!r}")
    return v


def _int(value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(f"{what} must be an integer in [{lo}, {hi}]: {value!r}")
    return value


def parse_listen(value: object) -> tuple[str, int]:
    """"ADDR:PORT", "[V6]:PORT" or ":PORT" (loopback) -> (address, port)."""
    if not isinstance(value, str):
        raise SpecError(f"serve.listen must be a string ADDR:PORT, not {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit() and len(port) <= 5):
        raise SpecError(f"serve.listen must be ADDR:PORT: {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    host = host or DEFAULT_LISTEN[0]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise SpecError(f"serve.listen: not an IP address: {host!r}") from None
    return host, _int(int(port), "serve.listen's port", 0, 65535)


def _domain(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(f"serve.domain must be a non-empty string: {value!r}")
    value = value.lower().rstrip(".")
    for label in value.split("."):
        if not label or len(label) > 63 or not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?",
                                                            label):
            raise SpecError(f"serve.domain is not a domain name: {value!r}")
    return value


def _ready(value: object, what: str) -> Ready:
    if not isinstance(value, Mapping) or len(value) != 1 or not value.keys() <= {"tcp", "http"}:
        raise SpecError(f"{what} must be {{tcp = true}} or {{http = \"/path\"}}: {value!r}")
    if "tcp" in value:
        if value["tcp"] is not True:
            raise SpecError(f"{what}.tcp must be true: {value['tcp']!r}")
        return Ready()
    path = value["http"]
    if (not isinstance(path, str) or not path.startswith("/") or len(path) > 2048
            or any(c <= " " or c == "\x7f" for c in path)):
        raise SpecError(f"{what}.http must be a path like \"/healthz\": {path!r}")
    return Ready(http=path)


def _mounts(value: object) -> list:
    if not isinstance(value, list):
        raise SpecError(f"template.mounts must be a list of tables: {value!r}")
    out = []
    for i, m in enumerate(value):
        what = f"template.mounts[{i}]"
        if not isinstance(m, Mapping):
            raise SpecError(f"{what} must be a table: {m!r}")
        if "bind" in m:
            extra = m.keys() - {"bind", "target", "readonly"}
            if extra:
                raise SpecError(f"{what}: unknown key(s) {', '.join(sorted(extra))}")
            ro = m.get("readonly", False)
            if not isinstance(ro, bool):
                raise SpecError(f"{what}.readonly must be true or false: {ro!r}")
            out.append(_spec.Bind(m["bind"], m.get("target"), readonly=ro))
        elif "tmpfs" in m:
            extra = m.keys() - {"tmpfs", "size", "mode"}
            if extra:
                raise SpecError(f"{what}: unknown key(s) {', '.join(sorted(extra))}")
            out.append(_spec.Tmpfs(m["tmpfs"], size=m.get("size"), mode=m.get("mode", 0o755)))
        else:
            raise SpecError(f"{what} must have a `bind` or a `tmpfs` key: {m!r}")
    return out


def _env(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SpecError(f"{what} must be a table of strings: {value!r}")
    return dict(value)


def _command(value: object, what: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise SpecError(f"{what} must be a non-empty list of strings: {value!r}")
    return value


def _known_keys(table: Mapping, known: set[str], what: str) -> None:
    unknown = table.keys() - known
    if unknown:
        raise SpecError(f"{what}: unknown key(s) {', '.join(sorted(unknown))} "
                        f"(known: {', '.join(sorted(known))})")


def make_template(table: Mapping, overrides: Mapping | None = None) -> Template:
    """A Template from the [template] table, with a control API create's
    overrides (OVERRIDE_KEYS) applied: env is merged, the rest replaces."""
    if not isinstance(table, Mapping):
        raise SpecError("the configuration needs a [template] table")
    _known_keys(table, _TEMPLATE_KEYS, "template")
    overrides = dict(overrides or {})
    unknown = overrides.keys() - OVERRIDE_KEYS
    if unknown:
        raise SpecError(f"unknown override(s) {', '.join(sorted(unknown))} "
                        f"(allowed: {', '.join(sorted(OVERRIDE_KEYS))})")
    t = {**table}
    env = {**BASE_ENV, **_env(t.get("env", {}), "template.env")}
    if "env" in overrides:
        env.update(_env(overrides.pop("env"), "env"))
    t.update(overrides)
    if "command" not in t:
        raise SpecError("template.command is required (the environment's server)")
    if "port" not in t:
        raise SpecError("template.port is required (the port the server listens on inside)")
    port = _int(t["port"], "template.port", 1, 65535)
    network = t.get("network", DEFAULT_NETWORK)
    if network in ("none", "host") or not isinstance(network, str):
        raise SpecError(f"template.network must name a network (environments are reached "
                        f"and resolve each other on it), not {network!r}")
    _spec.check_name(network, "template.network")
    options = {"env": env, "network": network,
               "mounts": _mounts(t.get("mounts", [])),
               "limits": t.get("limits")}
    for key in ("cwd", "rootfs", "hostname", "uid", "gid"):
        if key in t:
            options[key] = t[key]
    if options["limits"] is not None and not isinstance(options["limits"], Mapping):
        raise SpecError(f"template.limits must be a table: {options['limits']!r}")
    try:
        spec = _spec.Spec(_command(t["command"], "template.command"), **options)
    except TypeError as exc:  # e.g. an unknown limits key
        raise SpecError(f"template: {exc}") from None
    return Template(spec=spec, port=port,
                    ready=_ready(t.get("ready", {"tcp": True}), "template.ready"), table=table)


def parse_config(data: Mapping) -> ServeConfig:
    unknown = data.keys() - {"serve", "template"}
    if unknown:
        raise SpecError(f"unknown table(s) {', '.join(sorted(unknown))} "
                        "(known: serve, template)")
    serve = data.get("serve", {})
    if not isinstance(serve, Mapping):
        raise SpecError("[serve] must be a table")
    _known_keys(serve, _SERVE_KEYS, "serve")
    kw: dict[str, object] = {"template": make_template(data.get("template"))}
    if "listen" in serve:
        kw["listen"] = parse_listen(serve["listen"])
    if "domain" in serve:
        kw["domain"] = _domain(serve["domain"])
    for key in ("idle_timeout", "grace"):
        if key in serve:
            kw[key] = _seconds(serve[key], f"serve.{key}")
    for key in ("upstream_timeout", "ready_timeout", "shutdown_timeout", "header_timeout",
                "keepalive_timeout", "body_timeout"):
        if key in serve:
            kw[key] = _seconds(serve[key], f"serve.{key}", zero=False)
    if "spares" in serve:
        kw["spares"] = _int(serve["spares"], "serve.spares", 0, 1000)
    if "max_envs" in serve:
        kw["max_envs"] = _int(serve["max_envs"], "serve.max_envs", 1, 100_000)
    if "auth" in serve:
        if not isinstance(serve["auth"], bool):
            raise SpecError(f"serve.auth must be true or false: {serve['auth']!r}")
        kw["auth"] = serve["auth"]
    if "token" in serve:
        kw["token"] = check_token(serve["token"], "serve.token")
    return ServeConfig(**kw)


def check_token(value: object, what: str = "token") -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise SpecError(f"{what} must be 16-256 characters of [A-Za-z0-9._~+/=-]")
    return value


def load_config(path: str | os.PathLike) -> ServeConfig:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise SpecError(f"cannot read the configuration {os.fspath(path)!r}: "
                        f"{exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{os.fspath(path)}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{os.fspath(path)}: not UTF-8 (TOML is): byte {exc.start}") from None
    return parse_config(data)


# -- routing -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Route:
    """Where a request goes: kind 'control' (target: the path after the prefix),
    'env' (id, target: the request target to forward), 'none' (no id given),
    or 'bad' (error: what is wrong, for a 400)."""

    kind: str
    id: str | None = None
    target: str = "/"
    error: str | None = None


def _host_id(host: str, domain: str) -> str | None:
    """The id in a Host header `<id>.<domain>[:port]`; '' when it names the
    domain's sub-domain badly; None when it is not under the domain."""
    host = host.strip().lower()
    if host.startswith("["):
        return None
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    host = host.rstrip(".")
    suffix = "." + domain
    if not host.endswith(suffix):
        return None
    return host[: -len(suffix)]


def route(target: str, env_id_header: str | None, host: str | None, domain: str) -> Route:
    """Route one request: the reserved prefix first (always the control API),
    then X-Env-Id, then the host name <id>.<domain>, then the path /env/<id>/
    (stripped before forwarding)."""
    if target.startswith(RESERVED_PREFIX) or target == RESERVED_PREFIX[:-1]:
        return Route("control", target=target[len(RESERVED_PREFIX) - 1:] or "/")
    if not target.startswith("/"):
        # absolute-form (a proxy request) or authority-form: not ours to serve.
        return Route("bad", error="the request target must be a path (origin-form)")
    if env_id_header is not None:
        try:
            return Route("env", id=check_id(env_id_header.strip()), target=target)
        except SpecError as exc:
            return Route("bad", error=f"X-Env-Id: {exc}")
    if host:
        sub = _host_id(host, domain)
        if sub is not None:
            try:
                return Route("env", id=check_id(sub), target=target)
            except SpecError as exc:
                return Route("bad", error=f"Host: {exc}")
    if target.startswith("/env/"):
        rest = target[len("/env/"):]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        raw, tail = rest[:cut], rest[cut:]
        try:
            env_id = check_id(raw)
        except SpecError as exc:
            return Route("bad", error=f"path: {exc}")
        if not tail.startswith("/"):
            tail = "/" + tail
        return Route("env", id=env_id, target=tail)
    return Route("none")
