"""A network's hub: the process that keeps its namespaces, addresses, names and ports.

`python -m nsbox._hub NAME SUBNET|- host-route|-` (started by _network.py, never by hand).

One hub per network and user, shared by every process of that user that has a
sandbox on the network (or holds it open): they find it at an abstract unix
socket in the host's net namespace, `nsbox-net/<uid>/<name>`, which only
processes of that namespace can reach (sandboxes have their own) and only the
same user may use (SO_PEERCRED). The hub:

- makes the network's net namespace (inside a user namespace of its own when
  the user has no privilege) with a bridge whose address is the gateway;
- hands each client the namespace fds that csrc/net.c wires sandboxes with;
- leases addresses: one per live sandbox, never two at once, released when the
  sandbox ends or its process goes (even killed: its connection closes);
- answers DNS for the sandboxes' names at the gateway (see _dns.py);
- creates sockets inside the network for `Sandbox.connect`, and forwards the
  host ports a sandbox publishes (the listening sockets come from the client,
  bound in the host's namespace);
- with a host route (root only), links the caller's namespace to the bridge;
- exits as soon as no client is left; its namespaces, bridge and every veth go
  with it, and it removes its files.
"""

from __future__ import annotations

import array
import errno
import ipaddress
import json
import os
import queue
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
import zlib
from collections import deque

MAX_MESSAGE = 65536
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000  # os has them only from Python 3.12
# Sandboxes per bridge: a Linux bridge takes at most 1024 ports, so a network
# spreads over several, routed into one subnet (see Hub.lease). Tests lower it.
BRIDGE_PORTS = int(os.environ.get("NSBOX_HUB_BRIDGE_PORTS", "1000"))
# Ended sandboxes' net namespaces are let go this many at a time, each off
# its bridge first (see Hub.pace). 0: never hold them (the benchmark's unpaced
# comparison).
TEARDOWN_BATCH = int(os.environ.get("NSBOX_HUB_TEARDOWN_BATCH", "16"))
SUBNET_CANDIDATES = [ipaddress.IPv4Network(f"10.{n}.0.0/16") for n in range(88, 128)]


def address(uid: int, name: str) -> str:
    """The abstract socket of the hub of network `name` for user `uid`."""
    return f"\0nsbox-net/{uid}/{name}"


def send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    data = json.dumps(message).encode()
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One message and the fds it carried; (None, []) at EOF."""
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * 4),
                                                socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
            fds.extend(arr)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), fds


def _unshare(flags: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _link_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def _setns(fd: int, nstype: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _enter_namespaces() -> bool:
    """A new net namespace: with privilege (root, or root of a user namespace
    that owns ours) directly, else inside a new user namespace where we are 0.
    Returns whether the hub has a user namespace of its own."""
    try:
        _unshare(CLONE_NEWNET)
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EACCES):
            raise
    uid, gid = os.geteuid(), os.getegid()
    _unshare(CLONE_NEWUSER | CLONE_NEWNET)
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1\n")
    _write("/proc/self/gid_map", f"0 {gid} 1\n")
    return True


def _pick_subnet(requested: str) -> ipaddress.IPv4Network:
    from . import _net

    taken = _net.host_networks()
    if requested != "-":
        subnet = ipaddress.IPv4Network(requested)
        for net in taken:
            if subnet.overlaps(net):
                raise ValueError(f"subnet {subnet} overlaps the host's {net}")
        return subnet
    for subnet in SUBNET_CANDIDATES:
        if not any(subnet.overlaps(net) for net in taken):
            return subnet
    raise ValueError("every default subnet (10.88.0.0/16 to 10.127.0.0/16) overlaps a host "
                     "route: give the network a subnet")



class _Addresses:
    """The free addresses, in the order they are handed out: those never
    used yet (counted, not listed: a /8 has 16 million), then those given back,
    least recently first."""

    def __init__(self, first: ipaddress.IPv4Address, last: ipaddress.IPv4Address):
        self._next, self._last = int(first), int(last)
        self._back: deque[ipaddress.IPv4Address] = deque()

    def __len__(self) -> int:
        return max(self._last - self._next + 1, 0) + len(self._back)

    def popleft(self) -> ipaddress.IPv4Address:
        if self._next <= self._last:
            self._next += 1
            return ipaddress.IPv4Address(self._next - 1)
        return self._back.popleft()

    def append(self, address: ipaddress.IPv4Address) -> None:
        self._back.append(address)

class Lease:
    __slots__ = ("id", "client", "name", "address", "host_if", "shard", "listeners", "conns",
                 "netns")

    def __init__(self, lease_id: int, client: socket.socket, name: str | None,
                 addr: ipaddress.IPv4Address, host_if: str, shard: int):
        self.id = lease_id
        self.shard = shard
        self.client = client
        self.name = name
        self.address = addr
        self.host_if = host_if
        self.listeners: list[socket.socket] = []
        self.conns: set[socket.socket] = set()
        self.netns = -1  # the sandbox's net namespace, held (see Hub.pace)


class Hub:
    def __init__(self, name: str, subnet: ipaddress.IPv4Network, listener: socket.socket,
                 own_userns: bool, host_fd: int = -1):
        self.name = name
        self.domain = f"{name}.nsbox"
        self.subnet = subnet
        self.gateway = subnet.network_address + 1
        self.listener = listener
        self.own_userns = own_userns
        self.uid = os.geteuid()
        self.host_fd = host_fd  # the caller's net namespace, for a host route
        # The first host is the gateway; the last the host's, with a host route.
        last = subnet.broadcast_address - 1
        self.host_address = last if host_fd >= 0 else None
        self.free = _Addresses(self.gateway + 1, last - (1 if host_fd >= 0 else 0))
        self.leases: dict[int, Lease] = {}
        self.names: dict[str, Lease] = {}
        self.clients: dict[socket.socket, set[int]] = {}
        self.seq = 0
        self.bridges: list[int] = []  # ifindex per shard
        self.shard_use: list[int] = []  # live leases per shard
        # Leases' conns are touched by forwarding threads, the free addresses
        # and the bridges' use by the teardown pacer.
        self.lock = threading.Lock()
        self.dying: queue.SimpleQueue[Lease] = queue.SimpleQueue()
        self.sel = selectors.DefaultSelector()
        self.had_client = False

    def setup(self) -> None:
        from . import _net

        for conf in ("all", "default"):
            try:
                _write(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "1")
            except OSError:
                pass  # no IPv6 in this kernel
        # Routing between bridges, and ARP answered across them: in the hub's
        # own namespace, which has no way out.
        _write("/proc/sys/net/ipv4/ip_forward", "1")
        _write("/proc/sys/net/ipv4/conf/default/proxy_arp", "1")
        _net.loopback_up()
        self.add_shard()
        if self.host_fd >= 0:
            self.route_host()
        self.dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.dns.bind((str(self.gateway), 53))
        self.dir = tempfile.mkdtemp(prefix=f"nsbx-net-{self.name}-")
        os.chmod(self.dir, 0o755)
        self.sweep_stale_dirs()
        _write(os.path.join(self.dir, "resolv.conf"),
               f"nameserver {self.gateway}\nsearch {self.domain}\noptions ndots:1 timeout:1\n")
        _write(os.path.join(self.dir, "hosts"),
               "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        for f in ("resolv.conf", "hosts"):
            os.chmod(os.path.join(self.dir, f), 0o644)
        self.ns_fds = [os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)]
        if self.own_userns:
            self.ns_fds.append(os.open("/proc/self/ns/user", os.O_RDONLY | os.O_CLOEXEC))

    def route_host(self) -> None:
        """A veth from the bridge to the caller's namespace, where its end gets
        the subnet's last address (and so the subnet's route). It goes with the
        hub's namespace: nothing to remove."""
        from . import _net

        host_if = "nsbx-h" + (self.name if len(self.name) <= 9 else
                              f"{zlib.crc32(self.name.encode()):08x}")
        _net.add_host_link(host_if, self.host_fd, self.bridges[0])
        hub_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        _setns(self.host_fd, CLONE_NEWNET)
        try:
            _net.address_link(host_if, self.host_address, self.subnet.prefixlen)
        finally:
            _setns(hub_fd, CLONE_NEWNET)
            os.close(hub_fd)
        os.close(self.host_fd)
        self.host_fd = -1

    def add_shard(self) -> int:
        from . import _net

        shard = len(self.bridges)
        self.bridges.append(_net.add_bridge(shard, self.gateway, self.subnet.prefixlen))
        if len(self.shard_use) < len(self.bridges):
            self.shard_use.append(0)
        return shard

    # -- the loop ----------------------------------------------------------------

    def run(self) -> None:
        threading.Thread(target=self.pace, name="nsbox-hub-teardown", daemon=True).start()
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, self.accept)
        self.sel.register(self.dns, selectors.EVENT_READ, self.answer_dns)
        idle_deadline = 10.0  # a starter that never connects does not keep us
        while True:
            events = self.sel.select(timeout=idle_deadline if not self.had_client else None)
            if not events and not self.clients:
                break
            for key, _mask in events:
                key.data(key.fileobj)
            if self.had_client and not self.clients and not self._drain_backlog():
                break
        self.shutdown()

    def _drain_backlog(self) -> bool:
        """Accept whoever is already queued: a client that connected just as the
        last one left keeps the hub alive."""
        while True:
            try:
                self.accept(self.listener)
            except BlockingIOError:
                return bool(self.clients)

    def sweep_stale_dirs(self) -> None:
        """Remove the files directories of this network's earlier hubs, killed
        before they could: we hold the network's socket, so none of them lives.
        (mkdtemp's suffix has no '-': network 'ci' does not take 'ci-2''s.)"""
        prefix = f"nsbx-net-{self.name}-"
        try:
            entries = list(os.scandir(os.path.dirname(self.dir)))
        except OSError:
            return
        for entry in entries:
            rest = entry.name[len(prefix):]
            if not entry.name.startswith(prefix) or "-" in rest or entry.path == self.dir:
                continue
            try:
                if entry.is_dir(follow_symlinks=False) and \
                        entry.stat(follow_symlinks=False).st_uid == os.geteuid():
                    shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:
                pass

    def shutdown(self) -> None:
        self.listener.close()  # first: a client arriving now starts a new hub
        shutil.rmtree(self.dir, ignore_errors=True)
        os._exit(0)  # forwarding threads end with the process

    def accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            if listener is self.listener:
                raise
            return
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        peer_uid = int.from_bytes(creds[4:8], sys.byteorder)
        if peer_uid != self.uid:
            conn.close()
            return
        hello = {"subnet": str(self.subnet), "gateway": str(self.gateway),
                 "prefix": self.subnet.prefixlen, "files": self.dir,
                 "host_route": self.host_address is not None,
                 "domain": self.domain, "userns": self.own_userns}
        try:
            send(conn, hello, self.ns_fds)
        except OSError:
            conn.close()
            return
        self.clients[conn] = set()
        self.had_client = True
        self.sel.register(conn, selectors.EVENT_READ, self.serve)

    def serve(self, conn: socket.socket) -> None:
        try:
            message, fds = receive(conn)
        except (OSError, ValueError):
            message, fds = None, []
        if message is None:
            self.sel.unregister(conn)
            for lease_id in list(self.clients.pop(conn, ())):
                self.release(lease_id)
            conn.close()
            return
        try:
            reply, out_fds = self.handle(conn, message, fds)
        except Exception as exc:  # a bad request must not take the network down
            reply, out_fds = {"error": f"{type(exc).__name__}: {exc}"}, []
        finally:
            for fd in fds:
                os.close(fd)
        if reply is None:  # a one-way message
            return
        try:
            send(conn, reply, out_fds)
        except OSError:
            pass
        for fd in out_fds:
            os.close(fd)

    def handle(self, conn: socket.socket, message: dict, fds: list[int]):
        op = message.get("op")
        if op == "lease":
            return self.lease(conn, message.get("name")), []
        if op == "rename":
            return self.rename(conn, message["lease"], message.get("name")), []
        if op == "release":
            self.clients[conn].discard(message["lease"])
            self.release(message["lease"])
            return {"ok": True}, []
        if op == "hold":  # one way: the sandbox's net namespace, see pace()
            lease = self.leases.get(message["lease"])
            if lease is not None and fds and lease.netns < 0 and TEARDOWN_BATCH > 0:
                try:
                    lease.netns = os.dup(fds[0])
                except OSError:
                    pass  # out of fds: this one is not paced, nothing worse
            return None, []
        if op == "socket":
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            return {"ok": True}, [s.detach()]
        if op == "publish":
            lease = self.leases[message["lease"]]
            listener = socket.socket(fileno=os.dup(fds[0]))
            listener.setblocking(False)
            lease.listeners.append(listener)
            port = message["port"]
            self.sel.register(listener, selectors.EVENT_READ,
                              lambda s, lease=lease, port=port: self.forward(s, lease, port))
            return {"ok": True}, []
        if op == "status":
            from . import _net

            if "links" in message:  # which of these hub-side veths still exist
                return {"present": sum(map(_link_exists, message["links"]))}, []
            with self.lock:
                free = len(self.free)
            return {"leases": len(self.leases), "ports": _net.bridge_ports(self.bridges),
                    "free": free, "dying": self.dying.qsize(),
                    "bridges": len(self.bridges), "names": sorted(self.names),
                    "clients": len(self.clients)}, []
        return {"error": f"unknown request {op!r}"}, []

    def lease(self, conn: socket.socket, name: str | None) -> dict:
        if name is not None and name in self.names:
            return {"error": f"name {name!r} is taken on network {self.name!r}",
                    "kind": "name-taken"}
        with self.lock:
            full = not self.free
        if full:
            return {"error": f"network {self.name!r} ({self.subnet}) has no free address",
                    "kind": "full"}
        with self.lock:
            shard = next((k for k, n in enumerate(self.shard_use) if n < BRIDGE_PORTS), None)
            if shard is None:
                shard = len(self.shard_use)
                self.shard_use.append(0)
            addr = self.free.popleft()
            self.shard_use[shard] += 1
        if shard == len(self.bridges):
            self.add_shard()
        self.seq += 1
        lease = Lease(self.seq, conn, name, addr, f"nsbx{self.seq:x}", shard)
        self.leases[lease.id] = lease
        self.clients[conn].add(lease.id)
        if name is not None:
            self.names[name] = lease
        return {"ok": True, "lease": lease.id, "address": str(addr), "host_if": lease.host_if,
                "bridge": self.bridges[shard]}

    def rename(self, conn: socket.socket, lease_id: int, name: str | None) -> dict:
        """A live sandbox's name changes (or goes, with None): its DNS answers follow."""
        lease = self.leases.get(lease_id)
        if lease is None or lease_id not in self.clients[conn]:
            return {"error": f"no lease {lease_id} of this client"}
        if name is not None and self.names.get(name, lease) is not lease:
            return {"error": f"name {name!r} is taken on network {self.name!r}",
                    "kind": "name-taken"}
        if lease.name is not None and self.names.get(lease.name) is lease:
            del self.names[lease.name]
        lease.name = name
        if name is not None:
            self.names[name] = lease
        return {"ok": True}

    def release(self, lease_id: int) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        if lease.name is not None and self.names.get(lease.name) is lease:
            del self.names[lease.name]
        for listener in lease.listeners:
            self.sel.unregister(listener)
            listener.close()
        with self.lock:
            conns, lease.conns = lease.conns, set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if lease.netns >= 0:
            self.dying.put(lease)
        else:
            self.recycle(lease)

    def recycle(self, lease: Lease) -> None:
        """The lease's address and bridge port are free again (its address is
        reused last: the sandbox's veth goes with its namespace, a little later)."""
        with self.lock:
            self.shard_use[lease.shard] -= 1
            self.free.append(lease.address)

    def pace(self) -> None:
        """Let ended sandboxes' net namespaces go a batch at a time, each off its
        bridge first.

        The kernel destroys net namespaces in batches: all those dead when its
        cleanup runs, every device of them unregistered under one hold of the
        rtnl lock, which every new net namespace (and veth) also needs; and
        taking a port off a bridge waits for an RCU grace period (about a
        millisecond here) under that lock, once per port. Ending thousands of
        sandboxes at once stalled every start on the machine for up to a second
        (2,000 ending: p99 of starts meanwhile 157 ms to 1 s). So the hub holds
        each sandbox's namespace (the client sends it at start) and, one batch
        of TEARDOWN_BATCH at a time: takes each one's veth off the bridge (one
        short hold of the lock each, which starts can come between), lets the
        namespaces go, and waits until the kernel has removed their veths.
        Always, not only while sandboxes are starting: a start can come at any
        moment, and a teardown handed to the kernel cannot be interrupted.
        Measured with 2,000 killed at once and starts meanwhile: p99 of the
        starts 157 ms - 1 s before (everything let go at once when nothing had
        started for 0.25 s), 28-35 ms now; the veths are gone in 7-10 s instead
        of ~5 s. An address is reused only once its veth is gone.
        """
        from . import _net

        links: _net.Links | None = None
        while True:
            batch = [self.dying.get()]
            while len(batch) < TEARDOWN_BATCH:
                try:
                    batch.append(self.dying.get_nowait())
                except queue.Empty:
                    break
            for lease in batch:
                try:
                    links = links or _net.Links()
                    links.detach(lease.host_if)
                except OSError:
                    pass  # the namespace's death takes it off the bridge anyway, only slower
            for lease in batch:
                os.close(lease.netns)
                lease.netns = -1
            deadline = time.monotonic() + 10
            pending = batch
            while pending and time.monotonic() < deadline:
                pending = [lease for lease in pending if _link_exists(lease.host_if)]
                if pending:
                    time.sleep(0.002)
            for lease in batch:
                self.recycle(lease)

    def answer_dns(self, sock: socket.socket) -> None:
        from . import _dns

        try:
            wire, peer = sock.recvfrom(4096)
        except OSError:
            return
        reply = _dns.answer(wire, self.domain, self._lookup)
        if reply is not None:
            try:
                sock.sendto(reply, peer)
            except OSError:
                pass

    def _lookup(self, name: str) -> str | None:
        lease = self.names.get(name)
        return str(lease.address) if lease is not None else None

    # -- published ports ----------------------------------------------------------

    def forward(self, listener: socket.socket, lease: Lease, port: int) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.setblocking(True)
        threading.Thread(target=self._connect_and_pump, args=(conn, lease, port),
                         daemon=True).start()

    def _connect_and_pump(self, conn: socket.socket, lease: Lease, port: int) -> None:
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        upstream.settimeout(10)
        try:
            upstream.connect((str(lease.address), port))
        except OSError:
            upstream.close()
            conn.close()  # the client sees the connection closed, as with docker
            return
        upstream.settimeout(None)
        with self.lock:
            lease.conns.update((conn, upstream))
        other = threading.Thread(target=self._pump, args=(upstream, conn, lease), daemon=True)
        other.start()
        self._pump(conn, upstream, lease)
        other.join()
        with self.lock:
            lease.conns.difference_update((conn, upstream))
        conn.close()
        upstream.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, lease: Lease) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main(argv: list[str]) -> None:
    name, requested, host_route = argv
    out = os.fdopen(1, "w", buffering=1)  # one line each, flushed: we leave by os._exit
    if os.fork():  # the starter reaps this one at once; the hub lives on
        os._exit(0)
    os.setsid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        listener.bind(address(os.geteuid(), name))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            out.write("exists\n")
            os._exit(0)
        raise
    listener.listen(256)
    try:
        subnet = _pick_subnet(requested)
    except ValueError as exc:
        out.write(f"spec-error {exc}\n")
        os._exit(1)
    host_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        own_userns = _enter_namespaces()
        if host_route == "host-route" and own_userns:
            out.write("spec-error a host route needs root (CAP_NET_ADMIN where the caller is)\n")
            os._exit(1)
        if host_route != "host-route":
            os.close(host_fd)
            host_fd = -1
        hub = Hub(name, subnet, listener, own_userns, host_fd)
        hub.setup()
    except OSError as exc:
        out.write(f"os-error {exc.errno or 0} {exc}\n")
        os._exit(1)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # an fd per live sandbox (see Hub.pace)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out.write("ready\n")
    out.close()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    hub.run()


if __name__ == "__main__":
    main(sys.argv[1:])
