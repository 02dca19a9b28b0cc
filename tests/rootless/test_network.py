"""Networks: addresses, names, isolation, connect and publish (issue 4).

Each test uses networks of its own (unique names), whose hub lives in a net
namespace nsbox makes (inside a user namespace when unprivileged), so no
packet can leave the machine; the only host-side sockets are the loopback
listeners of `publish`. The `nets` fixture checks afterwards that each
network's hub has gone: its namespaces, bridge, veths and files with it.
"""

from __future__ import annotations

import concurrent.futures
import errno
import ipaddress
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest
from nsbx_test_helpers import SANDBOX_PYTHON

import nsbox
from nsbox import _hub, _network

# A one-connection-at-a-time TCP server: answers "<hostname> <what it read>".
SERVER = (
    "import socket,sys\n"
    "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('0.0.0.0',int(sys.argv[1])));s.listen(16);print('up',flush=True)\n"
    "while True:\n"
    " c,_=s.accept();d=c.recv(100)\n"
    " c.sendall(socket.gethostname().encode()+b' '+d);c.close()\n"
)
CLIENT = (
    "import socket,sys\n"
    "c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3)\n"
    "c.sendall(b'ping');print(c.recv(100).decode())\n"
)


def hub_alive(name: str) -> bool:
    """Whether the hub of network `name` (ours, by uid) still listens."""
    want = "@" + _hub.address(os.geteuid(), name)[1:]
    with open("/proc/net/unix") as f:
        return any(line.split()[-1] == want for line in f if len(line.split()) >= 8)


@pytest.fixture
def nets():
    """Unique network names; afterwards, every one's hub must be gone."""
    made: list[str] = []

    def new() -> str:
        made.append(f"t{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield new
    deadline = time.monotonic() + 10
    left = made
    while left and time.monotonic() < deadline:
        left = [n for n in made if hub_alive(n)]
        time.sleep(0.02)
    assert not left, f"network hubs still running: {left}"
    dirs = [d for d in os.listdir(tempfile_dir()) if any(d.startswith(f"nsbx-net-{n}-")
                                                         for n in made)]
    assert not dirs, f"network files left: {dirs}"


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


def server(net: str, name: str | None = None, port: int = 5000, **options) -> nsbox.Sandbox:
    box = nsbox.Sandbox([SANDBOX_PYTHON, "-c", SERVER, str(port)], network=net, name=name,
                        stdout=nsbox.PIPE, **options)
    assert box.stdout.readline() == b"up\n"
    return box


def client(net: str, host: str, port: int = 5000, **options) -> nsbox.Result:
    return nsbox.run([SANDBOX_PYTHON, "-c", CLIENT, host, str(port)], network=net,
                     capture_output=True, timeout=30, **options)


def test_sandbox_gets_eth0_an_address_and_a_route(nets):
    net = nets()
    r = nsbox.run(["sh", "-c", "cat /proc/net/route; cat /etc/resolv.conf; hostname"],
                  network=net, name="web", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    routes = [line.split() for line in r.stdout.splitlines() if line.startswith("eth0")]
    assert any(fields[1] == "00000000" for fields in routes), r.stdout  # a default route
    assert f"search {net}.nsbox" in r.stdout
    assert r.stdout.splitlines()[-1] == "web"  # the name is the host name


def test_two_sandboxes_talk_by_name(nets):
    net = nets()
    with server(net, "db") as db:
        assert isinstance(db.address, ipaddress.IPv4Address)
        for host in ("db", f"db.{net}.nsbox", str(db.address)):
            r = client(net, host)
            assert r.returncode == 0, (host, r.stderr)
            assert r.stdout.decode().strip() == "db ping"
        db.kill()


def test_names_resolve_for_sandboxes_started_later_and_go_with_them(nets):
    net = nets()
    with nsbox.Network(net):
        r = nsbox.run(["getent", "hosts", "late"], network=net, capture_output=True, timeout=30)
        assert r.returncode != 0  # no such name yet
        with server(net, "late") as late:
            r = nsbox.run(["getent", "hosts", "late"], network=net, capture_output=True,
                          text=True, timeout=30)
            assert r.returncode == 0 and r.stdout.split()[0] == str(late.address)
            late.kill()
        r = nsbox.run(["getent", "hosts", "late"], network=net, capture_output=True, timeout=30)
        assert r.returncode != 0  # gone with its sandbox


def test_other_networks_cannot_reach(nets):
    a, b = nets(), nets()
    with server(a, "db") as db:
        # Another network (another subnet): no route to db, by address or name.
        other = nsbox.Network(b, subnet="10.123.0.0/24")
        r = client(other, str(db.address))
        assert r.returncode != 0
        r = client(other, "db")
        assert r.returncode != 0
        db.kill()


def test_host_reaches_a_sandbox_by_connect_and_publish(nets):
    net = nets()
    with server(net, "web", publish=[(0, 5000), "127.0.0.1:0:5000"]) as web:
        with web.connect(5000, timeout=5) as s:
            s.sendall(b"hi")
            assert s.recv(100) == b"web hi"
        assert len(web.published) == 2
        for addr, host_port, port in web.published:
            assert addr == "127.0.0.1" and host_port > 0 and port == 5000
            with socket.create_connection((addr, host_port), timeout=5) as s:
                s.sendall(b"yo")
                assert s.recv(100) == b"web yo"
        web.kill()
        web.wait()
        # Gone with the sandbox: nothing listens on the published port any more.
        for addr, host_port, _ in web.published:
            with pytest.raises(OSError):
                socket.create_connection((addr, host_port), timeout=2).close()
        with pytest.raises(ProcessLookupError):
            web.connect(5000)


def test_connect_to_a_closed_port_is_refused(nets):
    net = nets()
    with nsbox.Sandbox(["sleep", "30"], network=net) as box:
        with pytest.raises(ConnectionRefusedError):
            box.connect(5999, timeout=5)
        box.kill()


def test_connect_needs_a_network():
    with nsbox.Sandbox(["sleep", "30"]) as box:
        with pytest.raises(ValueError, match="network"):
            box.connect(80)
        box.kill()


def test_unpublished_host_loopback_is_out_of_reach(nets):
    net = nets()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        with nsbox.Network(net):
            gateway = str(_network._hubs[net].gateway)
            for host in ("127.0.0.1", gateway):
                r = client(net, host, port)
                assert r.returncode != 0, host
    finally:
        listener.close()


def test_a_name_is_unique_while_its_sandbox_lives(nets):
    net = nets()
    with nsbox.Sandbox(["sleep", "30"], network=net, name="db") as first:
        with pytest.raises(nsbox.SpecError, match="'db' is taken"):
            nsbox.run(["true"], network=net, name="db")
        first.kill()
        first.wait()
    assert nsbox.run(["true"], network=net, name="db").returncode == 0


def test_a_running_sandbox_can_be_renamed(nets):
    net = nets()
    with server(net, "spare") as box, nsbox.Sandbox(["sleep", "30"], network=net,
                                                   name="other") as other:
        box.rename("db")
        assert client(net, "db").stdout.decode().strip() == "spare ping"  # host name stays
        assert client(net, "spare").returncode != 0  # the old name is gone
        with pytest.raises(nsbox.SpecError, match="'other' is taken"):
            box.rename("other")
        with pytest.raises(nsbox.SpecError):
            box.rename("Not A Name")
        box.rename(None)
        other.rename("db")  # free again
        assert nsbox.run(["true"], network=net, name="spare").returncode == 0
        box.kill()
        other.kill()
    with nsbox.Sandbox(["true"]) as plain, pytest.raises(ValueError, match="network"):
        plain.rename("x")


def test_processes_share_a_network(nets):
    """Another process's sandbox on the same network finds ours by name."""
    net = nets()
    code = (f"import nsbox,sys\n"
            f"r=nsbox.run([{SANDBOX_PYTHON!r},'-c',{CLIENT!r},'db','5000'],network={net!r},"
            f"name='peer',capture_output=True,timeout=30)\n"
            f"sys.stdout.buffer.write(r.stdout);sys.exit(r.returncode)\n")
    with server(net, "db") as db:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.decode().strip() == "db ping"
        db.kill()


def test_addresses_are_unique_and_nothing_is_left(nets):
    """Many sandboxes at once: distinct addresses; afterwards no lease, port or hub."""
    net = nets()
    network = nsbox.Network(net)
    with network:
        boxes = [nsbox.Sandbox(["sleep", "30"], network=net) for _ in range(20)]
        try:
            addresses = {b.address for b in boxes}
            assert len(addresses) == len(boxes)
            assert _network.status(network)["leases"] == len(boxes)
        finally:
            for b in boxes:
                b.kill()
                b.wait()
                b.close()

        def one(i: int) -> int:
            return nsbox.run(["true"], network=net, name=f"n{i}").returncode

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, range(200))) == {0}
        status = _network.status(network)
        assert status["leases"] == 0 and status["names"] == []
        deadline = time.monotonic() + 10  # veths go as their namespaces are destroyed
        while _network.status(network)["ports"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _network.status(network)["ports"] == 0


def test_setup_failure_releases_the_lease(nets):
    net = nets()
    with nsbox.Network(net) as network:
        with pytest.raises(nsbox.NetworkSetupError):
            nsbox.run(["true"], network=net, name="x", _debug_fail=("network", errno.EPERM))
        with pytest.raises(nsbox.CommandNotFoundError):
            nsbox.run(["/nonexistent"], network=net, name="x")
        assert _network.status(network)["leases"] == 0


def test_publish_on_a_taken_port_fails_cleanly(nets):
    net = nets()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(nsbox.NetworkSetupError, match="publish 127.0.0.1"):
            nsbox.run(["true"], network=net, publish=[(taken.getsockname()[1], 80)])
    finally:
        taken.close()


def host_routes() -> list[ipaddress.IPv4Network]:
    """The host's routed subnets (main table, not the default route)."""
    out = []
    with open("/proc/net/route") as f:
        for line in list(f)[1:]:
            fields = line.split()
            dst, mask = (int(fields[i], 16).to_bytes(4, sys.byteorder) for i in (1, 7))
            if mask != bytes(4):
                out.append(ipaddress.IPv4Network((bytes(dst), bytes(mask).hex().count("f") * 4),
                                                 strict=False))
    return out


def test_an_overlapping_subnet_is_refused(nets):
    routes = host_routes()
    if not routes:
        pytest.skip("the host routes no subnet to overlap")
    taken = routes[0]
    inside = ipaddress.IPv4Network((taken.network_address, max(taken.prefixlen, 24)))
    with pytest.raises(nsbox.SpecError, match=f"overlaps the host's {taken}"):
        nsbox.run(["true"], network=nsbox.Network(nets(), subnet=inside))


def test_loopback_and_other_special_subnets_are_refused():
    for subnet in ("127.1.0.0/16", "224.0.0.0/16", "169.254.0.0/16", "0.0.0.0/8"):
        with pytest.raises(nsbox.SpecError, match="subnet"):
            nsbox.Network("x", subnet=subnet)


def test_cli_network_name_and_publish(nets):
    net = nets()
    r = subprocess.run([sys.executable, "-m", "nsbox", "run", "--network", net, "--name", "cli",
                        "-p", "0:80", "--", "getent", "hosts", "cli", f"cli.{net}.nsbox"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0].split()[1:] == [f"cli.{net}.nsbox"]
    assert r.stderr.startswith("nsbox: published 127.0.0.1:") and r.stderr.endswith("-> 80\n")
    r = subprocess.run([sys.executable, "-m", "nsbox", "run", "--network", "Not_OK", "--",
                        "true"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 125 and r.stderr.count("\n") == 1 and "network name" in r.stderr


def test_a_network_spans_several_bridges(nets, monkeypatch):
    """A bridge takes at most 1024 ports: a network spreads over several, one
    subnet routed by the hub. With 2 ports a bridge, sandboxes on different
    bridges still reach each other by name."""
    monkeypatch.setenv("NSBOX_HUB_BRIDGE_PORTS", "2")
    net = nets()
    with nsbox.Network(net) as network, server(net, "db") as db, \
            server(net, "web", port=5001) as web:
        fillers = [nsbox.Sandbox(["sleep", "30"], network=net) for _ in range(3)]
        try:
            for host, port in (("db", 5000), ("web", 5001)):
                r = client(net, host, port)
                assert r.returncode == 0, r.stderr
                assert r.stdout.decode().strip() == f"{host} ping"
            assert _network.status(network)["bridges"] >= 3
        finally:
            for box in (*fillers, db, web):
                box.kill()
                box.wait()
            for box in fillers:
                box.close()


def test_supervisor_sandboxes_on_a_network(nets):
    """Through the trio supervisor: names, connect as a trio stream, a warm
    pool whose slots are wired while parked; cancellation releases leases."""
    import trio

    net = nets()

    async def main():
        async with nsbox.open_supervisor() as sup:
            db = await sup.start([SANDBOX_PYTHON, "-c", SERVER, "5000"], network=net,
                                 name="db", stdout=nsbox.PIPE)
            got = b""
            while not got.endswith(b"\n"):
                got += await db.stdout.receive_some(10)
            assert got == b"up\n"
            stream = await db.connect(5000)
            await stream.send_all(b"trio")
            assert await stream.receive_some(100) == b"db trio"
            await stream.aclose()
            pool = sup.pool(["x"], size=2, network=net)
            with trio.fail_after(30):
                while pool.ready < 2:
                    await trio.sleep(0.01)
            r = await sup.run([SANDBOX_PYTHON, "-c", CLIENT, "db", "5000"], network=net,
                              capture_output=True)
            assert r.returncode == 0 and r.stdout.decode().strip() == "db ping"
            assert pool.taken == 1
            with pytest.raises(nsbox.SpecError, match="warm pool"):
                sup.pool(["x"], size=1, network=net, name="n")
            with trio.move_on_after(0.5):
                await sup.run(["sleep", "30"], network=net, name="cancelled")
    with nsbox.Network(net) as network:
        trio.run(main)
        # Everything ended: no lease left (the parked slots' included).
        assert _network.status(network)["leases"] == 0


def test_host_route_needs_privilege(nets):
    if os.geteuid() == 0:
        pytest.skip("root here: tests/root/test_network_host_route.py covers it, in a "
                    "namespace of its own")
    with pytest.raises(nsbox.SpecError, match="host route needs root"):
        nsbox.run(["true"], network=nsbox.Network(nets(), host_route=True))


def test_ended_namespaces_are_let_go_in_batches_while_others_start(nets, monkeypatch):
    """The hub holds each sandbox's net namespace and, while sandboxes start on
    the network, lets them go a few at a time (so the kernel's teardown never
    holds every start for long); every address comes back once its veth is gone."""
    monkeypatch.setenv("NSBOX_HUB_TEARDOWN_BATCH", "2")
    net = nets()
    with nsbox.Network(net) as network:
        free = _network.status(network)["free"]
        boxes = [nsbox.Sandbox(["sleep", "30"], network=net) for _ in range(12)]
        assert _network.status(network)["free"] == free - 12
        for box in boxes:
            box.kill()
        for box in boxes:
            assert nsbox.run(["true"], network=net).returncode == 0  # starting meanwhile
            box.wait()
            box.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = _network.status(network)
            if status["ports"] == 0 and status["free"] == free:
                break
            time.sleep(0.05)
        assert (status["ports"], status["free"], status["dying"], status["leases"]) == \
            (0, free, 0, 0)


def test_the_teardown_pacer_takes_a_veth_off_its_bridge():
    """_net.Links.detach (a raw rtnetlink request, run by the hub for every ended
    sandbox before its namespace goes), in a net namespace of its own."""
    code = (
        "import socket\n"
        "from pyroute2 import IPRoute\n"
        "from nsbox import _net\n"
        "ipr = IPRoute()\n"
        "ipr.link('add', ifname='nsbxbr', kind='bridge')\n"
        "br = ipr.link_lookup(ifname='nsbxbr')[0]\n"
        "ipr.link('add', ifname='nsbxa', kind='veth', peer='nsbxb')\n"
        "ipr.link('set', index=socket.if_nametoindex('nsbxa'), master=br)\n"
        "def master():\n"
        "    return ipr.get_links(socket.if_nametoindex('nsbxa'))[0].get_attr('IFLA_MASTER')\n"
        "links = _net.Links()\n"
        "print(master() == br, links.detach('nsbxa'), master(), links.detach('nsbxnone'))\n"
        "links.close()\n"
    )
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable, "-c",
                        code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "None", "False"]


def test_eth0_mac_follows_the_address(nets):
    # A reused address keeps its MAC: neighbours' ARP entries stay right.
    probe = ("import fcntl,socket,struct;s=socket.socket();q=struct.pack('256s',b'eth0');"
             "mac=fcntl.ioctl(s.fileno(),0x8927,q)[18:24];"  # SIOCGIFHWADDR
             "ip=fcntl.ioctl(s.fileno(),0x8915,q)[20:24];"  # SIOCGIFADDR
             "print(mac.hex(':'), ip.hex(':'))")
    r = nsbox.run([SANDBOX_PYTHON, "-c", probe], network=nets(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    mac, ip = r.stdout.split()
    assert mac == "02:42:" + ip


def test_a_forked_child_does_not_keep_the_hub(nets):
    # Its copy of the hub connection would keep the parent's leases (names,
    # addresses, ports) after the parent dies: a forked child closes it.
    net = nets()
    with nsbox.Sandbox(["sleep", "30"], network=net):
        fd = _network._hubs[net].sock.fileno()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.fstat(fd)
                os._exit(1)
            except OSError:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_a_new_hub_sweeps_the_files_a_killed_one_left(nets, tmp_path):
    net = nets()
    import tempfile

    tmp = tempfile.gettempdir()
    stale = os.path.join(tmp, f"nsbx-net-{net}-zz0stale")
    other = os.path.join(tmp, f"nsbx-net-{net}-2-zz0other")  # network '<net>-2': not ours
    for d in (stale, other):
        os.mkdir(d)
    try:
        assert nsbox.run(["true"], network=net).returncode == 0
        assert not os.path.exists(stale) and os.path.exists(other)
    finally:
        for d in (stale, other):
            if os.path.exists(d):
                os.rmdir(d)

