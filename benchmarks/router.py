#!/usr/bin/env python3
"""`nsbox serve` against a direct connection and nginx, side by side in one run.

    python benchmarks/router.py [--duration 5] [--rounds 3] [--connections 1,16,128]
                                [--cold 30] [--json FILE] [--quick]

What it measures:
- Throughput and latency (wrk, `--latency`) of GET / on one environment at 1, 16 and 128
  connections, three ways, interleaved round by round: straight to the environment's
  address (direct), through nginx routing by the same X-Env-Id header (a `map` onto an
  upstream with keep-alive), and through `nsbox serve`. The environment runs nginx
  serving a 3-byte body, so the proxies, not the server, are what is measured.
- The cold path: the first request for a new id (made on demand, template
  `python3 -m http.server`) until its response, one at a time; beside it, the same
  server started as a plain process until its port accepts (what the server itself costs),
  the first request to an id created a moment before (the environment already up), and the
  first request for a new id when `serve.spares = 1` keeps one started (the warm pool).

Needs root (wrk and nginx from Debian: `apt-get install wrk nginx-light`): it re-executes
itself in a network namespace of its own (`unshare -n`), where its network's subnet is routed
to the network's hub (`Network(host_route=True)`), so wrk and nginx reach the environment
directly and nothing of the machine's own network changes.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

NETWORK = "nsbx-bench-router"
BACKEND_PORT = 8080
TOKEN = "nsbx-bench-" + uuid.uuid4().hex


def _need(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if not path:
        sys.exit(f"router.py: {tool} not found ({hint})")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """A `python -m nsbox serve` process."""

    def __init__(self, work: pathlib.Path, name: str, template: str, extra: str = ""):
        cfg = work / f"{name}.toml"
        cfg.write_text(f'[serve]\nlisten = "127.0.0.1:0"\ntoken = "{TOKEN}"\nmax_envs = 200\n'
                       f"idle_timeout = 0\n{extra}\n[template]\n{template}\n"
                       f'network = "{NETWORK}"\n')
        self.log = open(work / f"{name}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "nsbox", "serve", "--config",
                                      str(cfg)], stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 30
        self.url = None
        while self.url is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("router.py: nsbox serve did not start:\n" + self.text())
            m = re.search(r"listening on (http://\S+?)/ ", self.text())
            self.url = m.group(1) if m else None
            time.sleep(0.02)
        self.port = int(self.url.rsplit(":", 1)[1])

    def text(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(self.url + "/_nsbox/" + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def wrk(url: str, conns: int, seconds: float, header: str | None) -> dict:
    cmd = ["wrk", "-t", "1" if conns < 16 else "2", "-c", str(conns),
           "-d", f"{max(1, round(seconds))}s", "--latency", "--timeout", "10s"]
    if header:
        cmd += ["-H", header]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout

    def ms(v: str) -> float:
        n, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", v).groups()
        return float(n) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    lat = {p: ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", text, re.M)}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock_err = re.search(r"Socket errors: (.*)", text)
    if not rps or "50" not in lat:
        raise SystemExit(f"router.py: wrk failed on {url}:\n{out.stdout}\n{out.stderr}")
    return {"rps": float(rps.group(1)), "p50": lat["50"], "p99": lat["99"],
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sock_err.group(1) if sock_err else None}


NGINX_BACKEND = """
daemon off; master_process off; worker_processes 1; user root root; pid /tmp/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path /tmp/cb; proxy_temp_path /tmp/pt;
  fastcgi_temp_path /tmp/ft; uwsgi_temp_path /tmp/ut; scgi_temp_path /tmp/st;
  keepalive_requests 1000000;
  server { listen %d reuseport; location / { return 200 "ok\\n"; } }
}
"""

NGINX_FRONT = """
daemon off; worker_processes auto; pid %(work)s/front.pid; error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path %(work)s/cb; proxy_temp_path %(work)s/pt;
  fastcgi_temp_path %(work)s/ft; uwsgi_temp_path %(work)s/ut; scgi_temp_path %(work)s/st;
  keepalive_requests 1000000;
  map $http_x_env_id $env { default ""; bench env_bench; }
  upstream env_bench { server %(addr)s:%(port)d; keepalive 256; }
  server {
    listen 127.0.0.1:%(listen)d reuseport;
    location / {
      if ($env = "") { return 404; }
      proxy_pass http://$env; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
  }
}
"""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def cold_path(work: pathlib.Path, samples: int) -> dict:
    """First request for a new id until its response (python3 -m http.server)."""
    from nsbox._serve_config import BASE_ENV

    # The python3 an environment finds on its PATH, for the plain process too.
    python3 = shutil.which("python3", path=BASE_ENV["PATH"])
    template = f'command = ["{python3}", "-m", "http.server", "8000"]\nport = 8000\n'
    serve = Serve(work, "cold", template)
    spare = Serve(work, "spares", template, extra="spares = 1")
    out: dict = {"first_response_ms": [], "ready_ms": [], "precreated_ms": [],
                 "plain_server_ms": [], "from_spare_ms": []}
    try:
        def get(env_id: str) -> float:
            t0 = time.perf_counter()
            req = urllib.request.Request(serve.url + "/", headers={"X-Env-Id": env_id})
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
                assert r.status == 200
            return (time.perf_counter() - t0) * 1000

        get("warmup")  # the network's hub and the caches
        serve.api("DELETE", "envs/warmup")

        def spare_ready() -> None:
            deadline = time.monotonic() + 30
            while spare.api("GET", "health")["spares"] < 1:
                if time.monotonic() > deadline:
                    raise SystemExit("router.py: no spare came up:\n" + spare.text())
                time.sleep(0.01)
        for i in range(samples):
            env_id = f"c{i}"
            out["first_response_ms"].append(get(env_id))
            out["ready_ms"].append(serve.api("GET", f"envs/{env_id}")["ready_time"] * 1000)
            serve.api("DELETE", f"envs/{env_id}")
            serve.api("POST", "envs", {"id": f"p{i}"})
            out["precreated_ms"].append(get(f"p{i}"))
            serve.api("DELETE", f"envs/p{i}")
            spare_ready()
            t0 = time.perf_counter()
            req = urllib.request.Request(spare.url + "/", headers={"X-Env-Id": f"s{i}"})
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
            out["from_spare_ms"].append((time.perf_counter() - t0) * 1000)
            spare.api("DELETE", f"envs/s{i}")
            spare_ready()  # its refill done: it competes for the CPUs with nothing measured
            time.sleep(0.05)
            # The same server as a plain process on the host, until its port accepts.
            port = _free_port()
            t0 = time.perf_counter()
            proc = subprocess.Popen([python3, "-m", "http.server", str(port), "--bind",
                                     "127.0.0.1"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.0005)
            out["plain_server_ms"].append((time.perf_counter() - t0) * 1000)
            proc.terminate()
            proc.wait()
    finally:
        serve.stop()
        spare.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (5)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    ap.add_argument("--connections", default="1,16,128")
    ap.add_argument("--cold", type=int, default=30, help="cold-path samples (30)")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--quick", action="store_true", help="1 s runs, 1 round, 5 cold samples")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.cold = 1.0, 1, 5
    conns = [int(c) for c in args.connections.split(",")]
    if os.geteuid() != 0:
        sys.exit("router.py: needs root (it routes its network's subnet inside a network "
                 "namespace of its own, so wrk and nginx reach the environment directly)")
    _need("wrk", "apt-get install wrk")
    _need("nginx", "apt-get install nginx-light")
    if os.environ.get("NSBX_ROUTER_NETNS") != "1":
        env = {**os.environ, "NSBX_ROUTER_NETNS": "1"}
        return subprocess.run(["unshare", "-n", "--", sys.executable, __file__,
                               *(argv if argv is not None else sys.argv[1:])],
                              env=env).returncode
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    import nsbox

    work = pathlib.Path(tempfile.mkdtemp(prefix="nsbx-router-"))
    os.chmod(work, 0o755)
    (work / "backend.conf").write_text(NGINX_BACKEND % BACKEND_PORT)
    results: dict = {"parameters": vars(args), "throughput": {}}
    try:
        from nsbox.bench.latency import machine_info

        results["machine"] = machine_info()
    except Exception:  # the suite's helper is optional here
        results["machine"] = {"kernel": os.uname().release, "cpus": os.cpu_count()}
    front = None
    serve = None
    with nsbox.Network(NETWORK, host_route=True):
        try:
            serve = Serve(work, "serve",
                          'command = ["nginx", "-e", "stderr", "-c", "/bench/backend.conf"]\n'
                          f"port = {BACKEND_PORT}\n"
                          f'mounts = [{{ bind = "{work}", target = "/bench", readonly = true }}]\n')
            env = serve.api("POST", "envs", {"id": "bench"})
            addr = env["address"]
            listen = _free_port()
            (work / "front.conf").write_text(NGINX_FRONT % {
                "work": work, "addr": addr, "port": BACKEND_PORT, "listen": listen})
            front = subprocess.Popen(["nginx", "-c", str(work / "front.conf"),
                                      "-e", "stderr"], stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            targets = {
                "direct": (f"http://{addr}:{BACKEND_PORT}/", None),
                "nginx": (f"http://127.0.0.1:{listen}/", "X-Env-Id: bench"),
                "nsbox": (f"{serve.url}/", "X-Env-Id: bench"),
            }
            for url, header in targets.values():  # warm-up, and a check
                wrk(url, 4, 1, header)
            runs: dict = {c: {name: [] for name in targets} for c in conns}
            for rnd in range(args.rounds):
                for c in conns:
                    for name, (url, header) in targets.items():
                        runs[c][name].append(wrk(url, c, args.duration, header))
                print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
            print(f"\nGET / through each way, wrk {args.duration:g} s x {args.rounds} rounds, "
                  "medians of the rounds (ms)")
            print(f"{'conns':>5} {'way':<7} {'req/s':>9} {'p50':>7} {'p99':>7} "
                  f"{'p99 added':>9}  vs nginx")
            for c in conns:
                med = {name: {k: statistics.median(r[k] for r in rs)
                              for k in ("rps", "p50", "p99")}
                       for name, rs in runs[c].items()}
                results["throughput"][c] = {"runs": runs[c], "median": med}
                for name in targets:
                    m = med[name]
                    added = m["p99"] - med["direct"]["p99"]
                    ratio = m["rps"] / med["nginx"]["rps"]
                    print(f"{c:>5} {name:<7} {m['rps']:>9.0f} {m['p50']:>7.2f} "
                          f"{m['p99']:>7.2f} {added if name != 'direct' else 0:>9.2f}  "
                          f"{ratio:.2f}x")
        finally:
            if front is not None:
                front.terminate()
                front.wait()
            if serve is not None:
                serve.stop()
        if args.cold:
            cold = cold_path(work, args.cold)
            results["cold"] = cold
            print(f"\ncold path, {args.cold} new ids one at a time, template "
                  "`python3 -m http.server` (ms)")
            for key, what in (("first_response_ms", "first request for a new id -> response"),
                              ("ready_ms", "  of which: start until its port accepts"),
                              ("plain_server_ms", "the server as a plain process until "
                                                  "its port accepts"),
                              ("precreated_ms", "first request to an id created just before"),
                              ("from_spare_ms", "first request for a new id, serve.spares = 1")):
                v = cold[key]
                print(f"  {what:<58} p50 {statistics.median(v):7.1f}  p99 {pct(v, .99):7.1f}")
    if not os.environ.get("NSBX_ROUTER_KEEP"):
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
