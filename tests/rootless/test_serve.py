"""`python -m nsbox serve`, driven as users drive it: the real CLI in a process of
its own, real HTTP clients (httpx, raw sockets for malformed input), and an
environment template running tests/rootless/serve_app.py.

Each test runs its own router on a network of its own (a unique name); at the
end the router must have exited 0 after SIGTERM, and every environment's
process and the network's hub must be gone.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import os
import pathlib
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid

import httpx
import psutil
import pytest
from nsbx_test_helpers import SANDBOX_PYTHON

from nsbox import _hub

APP = str(pathlib.Path(__file__).with_name("serve_app.py"))
TOKEN = "nsbx-test-token-" + uuid.uuid4().hex


def hub_alive(name: str) -> bool:
    want = "@" + _hub.address(os.geteuid(), name)[1:]
    with open("/proc/net/unix") as f:
        return any(line.split()[-1] == want for line in f if len(line.split()) >= 8)


def toml_value(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v)


class Router:
    """A `python -m nsbox serve` process and what it printed."""

    def __init__(self, tmp_path: pathlib.Path, serve: dict | None = None,
                 template: dict | None = None, args: tuple = ()):
        self.network = f"t{uuid.uuid4().hex[:10]}"
        serve = {"listen": "127.0.0.1:0", "token": TOKEN, **(serve or {})}
        template = {"command": [SANDBOX_PYTHON, "/app/serve_app.py", "8000"], "port": 8000,
                    "network": self.network,
                    "mounts": [{"bind": APP, "target": "/app/serve_app.py", "readonly": True}],
                    **(template or {})}
        self.config = tmp_path / f"serve-{self.network}.toml"
        self.config.write_text(
            "[serve]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in serve.items())
            + "[template]\n" + "".join(f"{k} = {toml_value(v)}\n"
                                       for k, v in template.items()))
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nsbox", "serve", "--config", str(self.config), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = None
        deadline = time.monotonic() + 30
        while self.url is None and time.monotonic() < deadline and self.proc.poll() is None:
            for line in list(self.lines):
                m = re.search(r"listening on (http://\S+?)/ ", line)
                if m:
                    self.url = m.group(1)
            time.sleep(0.01)
        if self.url is None:
            self.stop()
            raise AssertionError("nsbox serve did not start:\n" + "\n".join(self.lines))
        self.pids: set[int] = set()

    terminated = False

    def terminate(self) -> None:
        self.terminated = True
        self.proc.send_signal(signal.SIGTERM)

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)

    def api(self, method: str, path: str, token: str | None = TOKEN, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with self.client() as c:
            return c.request(method, "/_nsbox/" + path, headers=headers, **kw)

    def envs(self) -> dict[str, dict]:
        r = self.api("GET", "envs")
        assert r.status_code == 200, r.text
        found = {e["id"]: e for e in r.json()["envs"]}
        self.pids |= {e["pid"] for e in found.values() if e["pid"]}
        return found

    def wait_for(self, pattern: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no line like {pattern!r} in:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        """SIGTERM; its exit status. Then: no environment or hub left."""
        if self.proc.poll() is None and not self.terminated:
            try:
                self.envs()
            except (httpx.HTTPError, AssertionError):
                pass
            self.terminate()
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._reader.join(timeout=5)
            self.proc.stderr.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
                hub_alive(self.network) or any(psutil.pid_exists(p) for p in self.pids)):
            time.sleep(0.02)
        assert not [p for p in self.pids if psutil.pid_exists(p)], "environments left"
        assert not hub_alive(self.network), "the network's hub is still running"
        return rc


@pytest.fixture
def router(tmp_path):
    made: list[Router] = []

    def start(**kw) -> Router:
        made.append(Router(tmp_path, **kw))
        return made[-1]

    yield start
    for r in made:
        rc = r.stop()
        assert rc == 0, "\n".join(r.lines)


def test_routes_by_header_host_and_path(router):
    r = router()
    with r.client() as c:
        by_header = c.get("/headers?x=1", headers={"X-Env-Id": "alpha"}).json()
        by_host = c.get("/headers", headers={"Host": f"alpha.localhost:{r.port}"}).json()
        by_path = c.get("/env/alpha/headers?y=2").json()
        beta = c.get("/hello", headers={"X-Env-Id": "beta"})
        assert c.get("/env/alpha").status_code == 404  # "/" of the app: forwarded as "/"
    assert by_header["path"] == "/headers?x=1"
    assert by_path["path"] == "/headers?y=2"  # the prefix is stripped
    assert by_host["path"] == "/headers"
    assert by_host["headers"]["x-forwarded-host"] == f"alpha.localhost:{r.port}"
    assert by_header["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert by_header["headers"]["x-forwarded-proto"] == "http"
    assert beta.text == "hello from beta"  # an environment's host name is its id
    envs = r.envs()
    assert set(envs) == {"alpha", "beta"}
    assert envs["alpha"]["requests"] == 4 and envs["alpha"]["state"] == "ready"
    assert len(r.pids) == 2
    assert r.wait_for(r"127\.0\.0\.1 alpha GET /env/alpha/headers\?y=2 200 ")


def test_environments_resolve_each_other_by_id(router):
    r = router()
    with r.client() as c:
        c.get("/hello", headers={"X-Env-Id": "db"}).raise_for_status()
        seen = c.get("/resolve?name=db", headers={"X-Env-Id": "web"})
    assert seen.status_code == 200
    assert seen.text == r.envs()["db"]["address"]


def test_concurrent_first_requests_create_each_id_once(router):
    r = router(serve={"max_envs": 60})
    ids = [f"e{i}" for i in range(50)]

    def get(env_id: str) -> str:
        with r.client() as c:
            return c.get("/hello", headers={"X-Env-Id": env_id}).text

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(get, ids * 3))
    assert answers == [f"hello from {i}" for i in ids * 3]
    envs = r.envs()
    assert set(envs) == set(ids)
    assert len({e["pid"] for e in envs.values()}) == 50
    for env_id in ids:
        r.wait_for(rf"serve: {env_id}: ready in")  # the log comes through a pipe: a moment
        started = [line for line in r.lines if re.search(rf"serve: {env_id}: ready in", line)]
        assert len(started) == 1, started


def test_streams_100_mb_both_ways_with_bounded_memory(router):
    r = router()
    size = 100 * 1024 * 1024
    proc = psutil.Process(r.proc.pid)
    with r.client() as c:
        assert c.get("/hello", headers={"X-Env-Id": "big"}).status_code == 200
        rss0 = proc.memory_info().rss
        peak = rss0

        block = os.urandom(1 << 20)
        digest = hashlib.sha256()

        def body():
            nonlocal peak
            for i in range(100):
                digest.update(block)
                if i % 8 == 0:
                    peak = max(peak, proc.memory_info().rss)
                yield block

        up = c.post("/sink", headers={"X-Env-Id": "big"}, content=body())  # chunked
        assert up.text == f"{size} {digest.hexdigest()}"
        got = 0
        with c.stream("GET", f"/bytes?n={size}", headers={"X-Env-Id": "big"}) as resp:
            for chunk in resp.iter_raw(1 << 20):
                got += len(chunk)
                if got % (8 << 20) < len(chunk):
                    peak = max(peak, proc.memory_info().rss)
        assert got == size
    assert peak - rss0 < 32 << 20, f"the router grew by {(peak - rss0) >> 20} MiB"


def _ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else b"\xfe" + struct.pack("!H", n)
    return bytes([0x80 | opcode]) + size + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


def _ws_read(sock: socket.socket) -> tuple[int, bytes]:
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            assert chunk, "connection closed"
            buf += chunk
        return buf

    head = exact(2)
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", exact(2))[0]
    return head[0] & 0x0F, exact(n)


def _ws_open(port: int, env_id: str, timeout: float) -> tuple[socket.socket, bytes]:
    """A websocket to /ws of environment `env_id` through the router: (socket, 101 head)."""
    key = base64.b64encode(os.urandom(16)).decode()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall((f"GET /env/{env_id}/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return s, head


def test_websocket_echo_through_the_router(router):
    r = router()
    s, head = _ws_open(r.port, "ws1", timeout=10)
    with s:
        assert b"sec-websocket-accept" in head.lower()
        for text in (b"hello", b"x" * 1000, "nsbox \u2713".encode()):
            s.sendall(_ws_frame(text))
            assert _ws_read(s) == (1, text)
        s.sendall(_ws_frame(b"", opcode=8))
        assert _ws_read(s)[0] == 8
    assert r.wait_for(r"ws1 GET /env/ws1/ws 101 ")


def test_a_websocket_ends_with_its_environment(router):
    # Deleted while the client reads nothing (the echo still queued): the
    # client's connection closes all the same.
    r = router()
    s, _ = _ws_open(r.port, "wsd", timeout=30)
    with s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(40):  # echoes pile up: we read none
            s.sendall(_ws_frame(b"x" * 60000, opcode=2))
        assert r.api("DELETE", "envs/wsd").status_code == 200
        while True:  # drained to the end: EOF, not a guard's timeout
            try:
                if not s.recv(1 << 20):
                    break
            except ConnectionResetError:
                break
    r.wait_for(r"wsd GET /env/wsd/ws 101 ")


def test_stray_bytes_after_a_response_do_not_reach_the_next_request(router):
    # A broken server's bytes past a response's end: that connection is not
    # kept for another request (another client's, here).
    r = router()
    with r.client() as alice, r.client() as bob:
        assert bob.get("/hello", headers={"X-Env-Id": "st"}).status_code == 200
        assert alice.get("/stray", headers={"X-Env-Id": "st"}).status_code == 204
        for _ in range(3):
            assert bob.get("/hello", headers={"X-Env-Id": "st"}).status_code == 200


def test_head_on_the_control_api_has_get_s_length(router):
    r = router()
    for path in ("health", "envs"):
        got = r.api("GET", path)
        head = r.api("HEAD", path)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == got.headers["content-length"] != "0"


def test_idle_environments_are_stopped(router):
    r = router(serve={"idle_timeout": 0.5})
    with r.client() as c:
        assert c.get("/hello", headers={"X-Env-Id": "idle"}).status_code == 200
    pid = r.envs()["idle"]["pid"]
    r.wait_for(r"idle: stopping \(idle\)")
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not psutil.pid_exists(pid)
    assert r.envs() == {}
    with r.client() as c:  # on demand again: a new one
        assert c.get("/hello", headers={"X-Env-Id": "idle"}).text == "hello from idle"
    assert r.envs()["idle"]["pid"] != pid


def test_the_maximum_is_enforced_with_503(router):
    r = router(serve={"max_envs": 2})
    with r.client() as c:
        for env_id in ("m1", "m2"):
            assert c.get("/hello", headers={"X-Env-Id": env_id}).status_code == 200
        full = c.get("/hello", headers={"X-Env-Id": "m3"})
        assert full.status_code == 503
        assert full.headers["retry-after"].isdigit()
        assert c.get("/hello", headers={"X-Env-Id": "m1"}).status_code == 200
        api = r.api("POST", "envs", json={"id": "m4"})
        assert api.status_code == 503
        assert r.api("DELETE", "envs/m2").status_code == 200
        assert c.get("/hello", headers={"X-Env-Id": "m3"}).status_code == 200
    assert set(r.envs()) == {"m1", "m3"}


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    return out


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /env/../x/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Env-Id: ../x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: UPPER_bad.localhost\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Env-Id: " + b"a" * 40 + b"\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 404),  # no environment named
    # Framed two ways (request smuggling): refused, never forwarded.
    (b"POST /sink HTTP/1.1\r\nHost: a\r\nX-Env-Id: a\r\nContent-Length: 4\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
])
def test_malformed_requests_get_4xx_and_the_router_goes_on(router, request_bytes, status):
    r = router()
    answer = _raw(r.port, request_bytes)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    with r.client() as c:
        assert c.get("/hello", headers={"X-Env-Id": "ok"}).status_code == 200
    assert set(r.envs()) == {"ok"}  # nothing was made for a bad id


def test_slow_partial_requests_are_cut_off(router):
    r = router(serve={"header_timeout": 0.5, "body_timeout": 0.5})
    with socket.create_connection(("127.0.0.1", r.port), timeout=10) as slow_body:
        slow_body.sendall(b"POST /env/a/sink HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n"
                          b"\r\n0123456789")
        time.sleep(0.8)
        answer = slow_body.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
    with socket.create_connection(("127.0.0.1", r.port), timeout=10) as slow:
        slow.sendall(b"GET /env/a/hello HTTP/1.1\r\nHo")
        # Meanwhile others are served.
        with r.client() as c:
            assert c.get("/hello", headers={"X-Env-Id": "b"}).status_code == 200
        time.sleep(0.8)
        answer = slow.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert slow.recv(65536) == b""  # and closed


def test_the_control_api_needs_the_token(router):
    r = router()
    for token in (None, "wrong-token-wrong-token"):
        for method, path in (("GET", "health"), ("GET", "envs"), ("POST", "envs"),
                             ("DELETE", "envs/x")):
            resp = r.api(method, path, token=token, json={"id": "x"})
            assert resp.status_code == 401, (method, path, token)
    # Also not through an environment's route: the prefix is always the API's.
    with r.client() as c:
        assert c.get("/_nsbox/envs", headers={"X-Env-Id": "a"}).status_code == 401
        assert c.get("/_nsbox/health", headers={"X-Nsbox-Token": TOKEN}).json()["status"] == "ok"
    assert r.envs() == {}


def test_the_control_api_creates_lists_and_deletes(router):
    r = router()
    made = r.api("POST", "envs", json={"id": "made", "env": {"GREETING": "hi"}})
    assert made.status_code == 201, made.text
    assert made.json()["state"] == "ready" and made.json()["address"]
    assert r.api("POST", "envs", json={"id": "made"}).status_code == 409
    assert r.api("POST", "envs", json={"id": "Bad/Id"}).status_code == 400
    assert r.api("POST", "envs", json={"id": "x", "mounts": []}).status_code == 400
    assert r.api("POST", "envs", json={"id": "x", "limits": {"memory": "lots"}}).status_code \
        == 400
    with r.client() as c:
        assert c.get("/env?name=GREETING", headers={"X-Env-Id": "made"}).text == "hi"
    listed = r.api("GET", "envs/made").json()
    assert listed["id"] == "made" and listed["requests"] == 1 and listed["last_request"]
    assert listed["stats"]["pids"] >= 1
    pid = listed["pid"]
    assert r.api("DELETE", "envs/made").status_code == 200
    assert r.api("GET", "envs/made").status_code == 404
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not psutil.pid_exists(pid)
    auto = r.api("POST", "envs", json={})  # an id of its own
    assert auto.status_code == 201 and re.fullmatch(r"[0-9a-f]{12}", auto.json()["id"])


def test_upstream_errors_are_502_and_504(router):
    r = router(serve={"upstream_timeout": 0.5})
    with r.client() as c:
        assert c.get("/close", headers={"X-Env-Id": "e"}).status_code == 502
        slow = c.get("/slow?s=3", headers={"X-Env-Id": "e"})
        assert slow.status_code == 504
        assert c.get("/hello", headers={"X-Env-Id": "e"}).status_code == 200
        two = c.get("/two-lengths", headers={"X-Env-Id": "e"})
        assert two.status_code == 502 and "Content-Length" in two.json()["error"]
        assert c.get("/hello?after", headers={"X-Env-Id": "e"}).status_code == 200
    # Asked once: an invalid response is not replayed on a fresh connection.
    r.wait_for(r'e \| app: "GET /hello\?after')  # the app's log comes through a pipe
    assert len([line for line in r.lines if '"GET /two-lengths' in line]) == 1


def test_a_slow_upload_is_not_an_upstream_timeout(router):
    # upstream_timeout counts from the request's end: the client's own upload
    # time (here three times the timeout) is not the environment's.
    r = router(serve={"upstream_timeout": 0.5, "body_timeout": 5})

    def slowly():
        for _ in range(6):
            yield b"x" * 1000
            time.sleep(0.25)

    with r.client() as c:
        resp = c.post("/sink", headers={"X-Env-Id": "up"}, content=slowly())
        assert resp.status_code == 200, resp.text
        assert resp.text.split()[0] == "6000"
        sized = c.post("/sink", headers={"X-Env-Id": "up", "Content-Length": "6000"},
                       content=slowly())
        assert sized.status_code == 200 and sized.text.split()[0] == "6000"


def test_the_control_api_answers_expect_100_continue(router):
    r = router()
    body = b'{"id": "exp"}'
    head = (b"POST /_nsbox/envs HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nExpect: 100-continue\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
        s.sendall(head + b"\r\n")  # no token: refused without waiting for the body
        assert s.recv(65536).startswith(b"HTTP/1.1 401 ")
    with socket.create_connection(("127.0.0.1", r.port), timeout=30) as s:
        s.sendall(head + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
        assert s.recv(65536) == b"HTTP/1.1 100 \r\n\r\n"
        s.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 201 "), answer
    assert set(r.envs()) == {"exp"}
    # The router's own responses are logged with their size, as proxied ones are.
    r.wait_for(r" POST /_nsbox/envs 401 [1-9][0-9]* ")


@pytest.mark.parametrize("command, words", [
    (["/nonexistent/server"], "/nonexistent/server"),
    (["sh", "-c", "echo failing; exit 3"], "exited before it was ready (exited, status 3)"),
])
def test_an_environment_that_cannot_start_is_a_502_naming_why(router, command, words):
    r = router(template={"command": command})
    with r.client() as c:
        for _ in range(2):  # and again: a new try each time, the router goes on
            resp = c.get("/", headers={"X-Env-Id": "broken"})
            assert resp.status_code == 502
            assert words in resp.json()["error"]
    made = r.api("POST", "envs", json={"id": "broken"})
    assert made.status_code == 502 and words in made.json()["error"]
    assert r.envs() == {}


def test_a_client_that_goes_away_cancels_its_request(router):
    r = router()
    with r.client() as c:
        c.get("/hello", headers={"X-Env-Id": "gone"}).raise_for_status()
    with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
        s.sendall(b"GET /env/gone/slow?s=30 HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.3)
    line = r.wait_for(r"gone GET /env/gone/slow\?s=30 499 ")
    assert float(line.rsplit(" ", 1)[1].rstrip("ms")) < 5000


def test_keep_alive_and_chunked_bodies(router):
    r = router()
    with r.client() as c:
        for i in range(20):
            body = os.urandom(1000 + i * 7919)
            resp = c.post("/echo", headers={"X-Env-Id": "ka"},
                          content=iter([body[:500], body[500:]]))  # chunked upload
            assert resp.content == body
        assert c.head("/hello", headers={"X-Env-Id": "ka"}).status_code == 200
    r.wait_for(r'ka \| app: "HEAD /hello')  # the app's log comes through a pipe: a moment
    app_lines = [line for line in r.lines if "ka | app:" in line]
    assert len(app_lines) == 21


def test_sigterm_finishes_requests_in_flight_and_leaves_nothing(router):
    r = router()
    with r.client() as c:
        for env_id in ("s1", "s2", "s3"):
            c.get("/hello", headers={"X-Env-Id": env_id}).raise_for_status()
    r.envs()
    result: list = []

    def slow():
        with r.client() as c:
            result.append(c.get("/slow?s=1", headers={"X-Env-Id": "s1"}))

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 10  # in flight (the health request counts itself too)
    while r.api("GET", "health").json()["requests_in_flight"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    r.terminate()
    t.join(timeout=20)
    assert result and result[0].status_code == 200 and result[0].text == "slow"
    assert r.stop() == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", r.port), timeout=2).close()


def test_spares_are_renamed_for_new_ids_and_refilled(router):
    r = router(serve={"spares": 2})

    def spares() -> int:
        return r.api("GET", "health").json()["spares"]

    deadline = time.monotonic() + 30
    while spares() < 2:
        assert time.monotonic() < deadline, "\n".join(r.lines)
        time.sleep(0.05)
    with r.client() as c:
        hello = c.get("/hello", headers={"X-Env-Id": "w1"})
        assert hello.status_code == 200 and hello.text.startswith("hello from nsbx-spare-")
        r.wait_for(r"serve: w1: from spare nsbx-spare-")
        # Named on the network as the id: another environment resolves it.
        assert c.get("/resolve?name=w1", headers={"X-Env-Id": "w2"}).text == \
            r.envs()["w1"]["address"]
        created = r.api("POST", "envs", json={"id": "w3", "env": {"X": "1"}})
        assert created.status_code == 201  # overrides: started cold, not from a spare
        # Its host name is its id: made cold (a spare's would be nsbx-spare-...).
        assert c.get("/hello", headers={"X-Env-Id": "w3"}).text == "hello from w3"
    while spares() < 2:
        assert time.monotonic() < deadline, "\n".join(r.lines)
        time.sleep(0.05)
    assert set(r.envs()) == {"w1", "w2", "w3"}  # spares are not listed as environments


def test_http10_pipelining_head_and_connection_close(router):
    r = router()
    with r.client() as c:
        c.get("/hello", headers={"X-Env-Id": "p"}).raise_for_status()
    # HTTP/1.0 without a Host header: answered, then closed.
    old = _raw(r.port, b"GET /env/p/hello HTTP/1.0\r\n\r\n")
    assert old.startswith(b"HTTP/1.1 200 ") and old.endswith(b"hello from p")
    # Two requests in one write: both answered, in order, on one connection.
    both = _raw(r.port, b"GET /env/p/hello HTTP/1.1\r\nHost: a\r\n\r\n"
                        b"HEAD /env/p/hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert both.count(b"HTTP/1.1 200 ") == 2, both
    first, second = both.split(b"HTTP/1.1 200 ")[1:]
    assert first.endswith(b"hello from p") and b"hello" not in second.split(b"\r\n\r\n", 1)[1]
