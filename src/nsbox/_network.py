"""A process's side of networks: its connection to each network's hub, and leases.

The hub (_hub.py) is found, or started, on a sandbox's first need of a
network; the connection stays while this process has a sandbox on it (or holds
it with `with network:`), and closes with the last, so nothing outlives its
sandboxes. A Lease is one sandbox's place: address, the hub end's name, and the
fds csrc/net.c wires it with.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time

from . import _errors, _hub
from ._spec import Network, Publish

_STEPS = ("entering the hub's user namespace", "entering the hub's net namespace",
          "opening a netlink socket in the hub", "creating the veth pair",
          "opening a netlink socket in the sandbox", "finding eth0",
          "turning IPv6 off on eth0", "addressing eth0", "bringing eth0 up",
          "adding the default route", "routing the address to its bridge in the hub")


class Lease:
    """One sandbox's place on a network."""

    __slots__ = ("hub", "network", "id", "name", "address", "gateway", "prefix", "host_if",
                 "bridge", "published", "step")

    def __init__(self, hub: _Hub, network: Network, reply: dict, name: str | None):
        self.hub = hub
        self.network = network
        self.id = reply["lease"]
        self.name = name
        self.address = ipaddress.IPv4Address(reply["address"])
        self.gateway = hub.gateway
        self.prefix = hub.prefix
        self.host_if = reply["host_if"]
        self.bridge = reply["bridge"]  # its shard's bridge (see _hub.Hub.lease)
        self.published: list[tuple[str, int, int]] = []
        self.step = -1

    hub_fd = property(lambda self: self.hub.netns_fd)
    userns_fd = property(lambda self: self.hub.userns_fd)
    files = property(lambda self: self.hub.files)

    def at_step(self, index: int) -> Lease:
        self.step = index
        return self

    def describe(self) -> str:
        where = f"network {self.network.name}, {self.address}"
        if 0 <= self.step < len(_STEPS):
            return f"{where}: {_STEPS[self.step]}"
        return where


class _Hub:
    """This process's connection to one network's hub."""

    def __init__(self, network: Network):
        self.network = network
        self.lock = threading.Lock()
        self.refs = 0
        self.sock, hello, fds = _connect(network)
        from ._native import above_stdio

        fds = [above_stdio(fd) for fd in fds]  # handed to setup children by number
        self.netns_fd = fds[0]
        self.userns_fd = fds[1] if hello["userns"] else -1
        self.subnet = ipaddress.IPv4Network(hello["subnet"])
        self.gateway = ipaddress.IPv4Address(hello["gateway"])
        self.prefix = hello["prefix"]
        self.files = hello["files"]
        self.host_route = hello["host_route"]
        problem = _mismatch(network, self)
        if problem:
            self.close()
            raise _errors.SpecError(problem)

    def request(self, message: dict, fds: list[int] = ()) -> tuple[dict, list[int]]:
        with self.lock:
            try:
                _hub.send(self.sock, message, fds)
                reply, got = _hub.receive(self.sock)
            except OSError as exc:
                raise _errors.NetworkSetupError(
                    exc.errno or 0, f"nsbox: network {self.network.name}: the hub is gone: {exc}",
                    stage="network") from None
        if reply is None:
            raise _errors.NetworkSetupError(
                0, f"nsbox: network {self.network.name}: the hub is gone", stage="network")
        return reply, got

    def close(self) -> None:
        self.sock.close()
        for fd in (self.netns_fd, self.userns_fd):
            if fd >= 0:
                os.close(fd)
        self.netns_fd = self.userns_fd = -1


def _mismatch(network: Network, hub: _Hub) -> str | None:
    """Why `network` is not the one its hub runs (another process made it otherwise)."""
    if network.subnet is not None and network.subnet != hub.subnet:
        return f"network {network.name!r} exists with subnet {hub.subnet}, not {network.subnet}"
    if network.host_route and not hub.host_route:
        return f"network {network.name!r} exists without a host route"
    return None


_lock = threading.Lock()  # guards _hubs and _starting; never held while a hub starts
_hubs: dict[str, _Hub] = {}
_starting: dict[str, threading.Lock] = {}  # held by the thread connecting to a network's hub


def _forget_after_fork() -> None:
    """In a forked child: it is not the hubs' client. Close its copies of their
    sockets and fds too, or a hub would keep the parent's leases (names,
    addresses, published ports) for as long as the child lives, parent killed
    or not."""
    global _lock
    _lock = threading.Lock()
    _starting.clear()
    for hub in _hubs.values():
        hub.lock = threading.Lock()  # it may have been held by another thread at fork
        try:
            hub.close()
        except OSError:
            pass
    _hubs.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _acquire(network: Network) -> _Hub:
    """This process's connection to the network's hub (started if need be),
    one more reference to it. Connecting to (or starting) one network's hub
    takes a while: starts and ends on the others go on meanwhile, and other
    threads wanting the same one wait for it."""
    name = network.name
    while True:
        with _lock:
            hub = _hubs.get(name)
            if hub is not None:
                if _mismatch(network, hub):
                    raise _errors.SpecError(_mismatch(network, hub))
                hub.refs += 1
                return hub
            gate = _starting.get(name)
            mine = gate is None
            if mine:
                gate = _starting[name] = threading.Lock()
                gate.acquire()
        if not mine:
            with gate:  # until the thread connecting is done, then look again
                pass
            continue
        try:
            hub = _Hub(network)
            with _lock:
                hub.refs += 1
                _hubs[name] = hub
            return hub
        finally:
            with _lock:
                del _starting[name]
            gate.release()


def _drop(hub: _Hub) -> None:
    with _lock:
        hub.refs -= 1
        if hub.refs == 0:
            if _hubs.get(hub.network.name) is hub:
                del _hubs[hub.network.name]
            hub.close()


def hold(network: Network) -> None:
    """Keep the network (its hub, addresses and names) until unhold."""
    _acquire(network)


def unhold(network: Network) -> None:
    with _lock:
        hub = _hubs.get(network.name)
    if hub is not None:
        _drop(hub)


def lease(network: Network, name: str | None) -> Lease:
    """An address (and `name`) on `network` for a sandbox about to start."""
    hub = _acquire(network)
    try:
        reply, _ = hub.request({"op": "lease", "name": name})
        if "error" in reply:
            if reply.get("kind") == "name-taken":
                raise _errors.SpecError(f"nsbox: {reply['error']}")
            # ENOSPC: the address pool is full (the supervisor waits for room).
            err = errno.ENOSPC if reply.get("kind") == "full" else 0
            raise _errors.NetworkSetupError(err, f"nsbox: {reply['error']}", stage="network")
        return Lease(hub, network, reply, name)
    except BaseException:
        _drop(hub)
        raise


def rename(lease: Lease, name: str | None) -> None:
    """The sandbox's name on its network becomes `name` (None: no name)."""
    reply, _ = lease.hub.request({"op": "rename", "lease": lease.id, "name": name})
    if "error" in reply:
        if reply.get("kind") == "name-taken":
            raise _errors.SpecError(f"nsbox: {reply['error']}")
        raise _errors.NetworkSetupError(0, f"nsbox: {reply['error']}", stage="network")
    lease.name = name


def hold_namespace(lease: Lease, pid: int) -> None:
    """Hand the started sandbox's net namespace to the hub, which lets it go
    at a pace the kernel keeps up with once the sandbox ends (see _hub.Hub.pace).
    Best effort: a sandbox that already died is simply not held."""
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        with lease.hub.lock:
            _hub.send(lease.hub.sock, {"op": "hold", "lease": lease.id}, [fd])
    except OSError:
        pass  # the hub is gone: the next request says so
    finally:
        os.close(fd)


def release(lease: Lease) -> None:
    """The sandbox has ended: its address, name and published ports go back."""
    try:
        lease.hub.request({"op": "release", "lease": lease.id})
    except _errors.NetworkSetupError:
        pass  # the hub is gone: so is everything the lease held
    finally:
        _drop(lease.hub)


def publish(lease: Lease, entry: Publish) -> tuple[str, int, int]:
    """Listen on the host's (addr, host_port) and have the hub forward to the
    sandbox's port. Returns (addr, host port, port), the host port as bound."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((entry.host_address, entry.host_port))
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise _errors.NetworkSetupError(
            exc.errno or 0, f"nsbox: cannot {entry.describe()}: {exc.strerror}",
            stage="network", op=entry) from None
    try:
        host_port = listener.getsockname()[1]
        reply, _ = lease.hub.request({"op": "publish", "lease": lease.id, "port": entry.port},
                                     [listener.fileno()])
    finally:
        listener.close()
    if "error" in reply:
        raise _errors.NetworkSetupError(0, f"nsbox: {reply['error']}", stage="network",
                                        op=entry)
    out = (entry.host_address, host_port, entry.port)
    lease.published.append(out)
    return out


def socket_in(lease: Lease) -> socket.socket:
    """A TCP socket inside the network (unconnected): it reaches the sandboxes."""
    reply, fds = lease.hub.request({"op": "socket"})
    if "error" in reply or not fds:
        for fd in fds:
            os.close(fd)
        raise _errors.NetworkSetupError(0, f"nsbox: {reply.get('error', 'no socket')}",
                                        stage="network")
    return socket.socket(fileno=fds[0])


def status(network: Network, links: list[str] | None = None) -> dict:
    """The hub's own account: live leases, ports on its bridges, free addresses,
    namespaces waiting to go, names, clients; with `links` (hub ends of veths,
    Lease.host_if), how many of them still exist."""
    hub = _acquire(network)
    try:
        return hub.request({"op": "status", **({"links": links} if links else {})})[0]
    finally:
        _drop(hub)


# -- finding or starting the hub ---------------------------------------------------


def _connect(network: Network) -> tuple[socket.socket, dict, list[int]]:
    addr = _hub.address(os.geteuid(), network.name)
    for attempt in range(50):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(addr)
            hello, fds = _hub.receive(sock)
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            _start_hub(network)
            continue
        except OSError:  # the hub was leaving as we came: a new one will answer
            hello, fds = None, []
        if hello is None:
            sock.close()
            time.sleep(0.001 * attempt)
            continue
        return sock, hello, fds
    raise _errors.NetworkSetupError(
        0, f"nsbox: network {network.name}: cannot reach or start its hub", stage="network")


def _start_hub(network: Network) -> None:
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    subnet = str(network.subnet) if network.subnet is not None else "-"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nsbox._hub", network.name, subnet,
             "host-route" if network.host_route else "-"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            close_fds=True, start_new_session=True, env=env, cwd="/",
        )
    except OSError as exc:
        raise _errors.SpawnError(exc.errno or 0, f"nsbox: cannot start the network's hub: "
                                                 f"{exc.strerror}") from None
    with proc:
        line = proc.stdout.readline().decode(errors="replace").strip()
        proc.wait()
    word, _, rest = line.partition(" ")
    if word in ("ready", "exists"):
        return
    if word == "spec-error":
        raise _errors.SpecError(f"nsbox: network {network.name}: {rest}")
    if word == "os-error":
        code, _, message = rest.partition(" ")
        raise _errors.UnsupportedError(
            int(code), f"nsbox: network {network.name}: cannot create its hub: {message}",
            hint="networks need user and network namespaces")
    raise _errors.NetworkSetupError(
        0, f"nsbox: network {network.name}: its hub failed to start ({line or 'no output'})",
        stage="network")
