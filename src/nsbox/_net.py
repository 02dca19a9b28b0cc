"""The only importer of pyroute2: what a network's hub asks of netlink.

Used by the hub process (_hub.py), never on a sandbox's start path: each
sandbox's veth is made by the C core (csrc/net.c) in about a millisecond,
where a pyroute2 round trip per sandbox costs several.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError


def bridge_name(shard: int) -> str:
    return f"nsbx-br{shard}"


class NetError(OSError):
    """A netlink request of the hub failed (pyroute2's errors stay in here)."""


def host_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks this namespace routes or has addresses in, but the default route."""
    out: list[ipaddress.IPv4Network] = []
    try:
        with IPRoute() as ipr:
            for route in ipr.get_routes(family=socket.AF_INET, table=254):
                dst, plen = route.get_attr("RTA_DST"), route["dst_len"]
                if dst is not None and plen > 0:
                    out.append(ipaddress.IPv4Network(f"{dst}/{plen}", strict=False))
            for addr in ipr.get_addr(family=socket.AF_INET):
                out.append(ipaddress.IPv4Network(
                    f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}", strict=False))
    except NetlinkError as exc:
        raise NetError(exc.code, f"cannot read the host's routes: {exc}") from None
    return [n for n in out if not n.is_loopback]


def loopback_up() -> None:
    try:
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    except NetlinkError as exc:
        raise NetError(exc.code, f"cannot bring the hub's loopback up: {exc}") from None


def add_bridge(shard: int, gateway: ipaddress.IPv4Address, prefix: int) -> int:
    """In this (the hub's) namespace: bridge number `shard`, up, with the
    gateway's address: the subnet's on the first bridge (its connected route),
    /32 on the others (each sandbox's address is routed to its own bridge, see
    csrc/net.c). Returns the bridge's ifindex.

    No STP and no multicast snooping: ports forward at once, and no sandbox's
    interface takes part in multicast (IPv6 is off in sandboxes).
    """
    name = bridge_name(shard)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=name, kind="bridge", br_stp_state=0,
                     br_forward_delay=0, br_mcast_snooping=0)
            index = ipr.link_lookup(ifname=name)[0]
            ipr.addr("add", index=index, address=str(gateway),
                     prefixlen=prefix if shard == 0 else 32)
            ipr.link("set", index=index, state="up")
            return index
    except NetlinkError as exc:
        raise NetError(exc.code, f"cannot set up the network's bridge {name}: {exc}") from None


HOST_LINK = "nsbx-host"  # the hub's end of a host route's veth (see add_host_link)


def bridge_ports(bridges: list[int]) -> int:
    """How many sandboxes' veths are on the bridges (the hub's view of live sandboxes)."""
    try:
        with IPRoute() as ipr:
            return sum(1 for link in ipr.get_links() if link.get_attr("IFLA_MASTER") in bridges
                       and link.get_attr("IFLA_IFNAME") != HOST_LINK)
    except NetlinkError as exc:
        raise NetError(exc.code, f"cannot list the bridge's ports: {exc}") from None


def add_host_link(host_if: str, host_ns_fd: int, bridge: int) -> None:
    """In the hub: a veth whose end `host_if` is in the namespace `host_ns_fd`
    and whose other end is on the bridge, up."""
    hub_end = HOST_LINK
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=hub_end, kind="veth",
                     peer={"ifname": host_if, "net_ns_fd": host_ns_fd})
            index = ipr.link_lookup(ifname=hub_end)[0]
            ipr.link("set", index=index, master=bridge, state="up")
    except NetlinkError as exc:
        raise NetError(exc.code, f"cannot link the host to the network: {exc}") from None


def address_link(ifname: str, address: ipaddress.IPv4Address, prefix: int) -> None:
    """In this namespace: `ifname` up with `address`/`prefix` (and so its route)."""
    try:
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            ipr.addr("add", index=index, address=str(address), prefixlen=prefix)
            ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        raise NetError(exc.code, f"cannot address {ifname}: {exc}") from None


class Links:
    """Taking veths off their bridges, many times over (the hub's teardown
    pacer): one raw rtnetlink request each on a socket kept open. pyroute2
    takes ~0.9 ms of Python per request here, time the hub's main loop (and
    every start waiting on it for a lease) would wait for the GIL."""

    _RTM_NEWLINK, _NLMSG_ERROR, _IFLA_MASTER = 16, 2, 10
    _NLM_F_REQUEST, _NLM_F_ACK = 1, 4

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def detach(self, ifname: str) -> bool:
        """Take the link named `ifname` off its bridge; False when there is none."""
        try:
            index = socket.if_nametoindex(ifname)
        except OSError:
            return False
        self._seq += 1
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0) + \
            struct.pack("=HHI", 8, self._IFLA_MASTER, 0)
        msg = struct.pack("=IHHII", 16 + len(body), self._RTM_NEWLINK,
                          self._NLM_F_REQUEST | self._NLM_F_ACK, self._seq, 0) + body
        self._sock.send(msg)
        while True:
            reply = self._sock.recv(4096)
            if len(reply) < 20:
                raise NetError(errno.EPROTO, f"cannot take {ifname} off its bridge: short reply")
            _, kind, _, seq, _ = struct.unpack_from("=IHHII", reply)
            if kind != self._NLMSG_ERROR or seq != self._seq:
                continue
            (code,) = struct.unpack_from("=i", reply, 16)
            if code == 0:
                return True
            if -code == errno.ENODEV:  # gone meanwhile
                return False
            raise NetError(-code, f"cannot take {ifname} off its bridge: {os.strerror(-code)}")
