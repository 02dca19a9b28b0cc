/*
 * net.c - a sandbox's place on a network: the hop, the veth, and eth0.
 *
 * A network's bridge lives in its hub: a net namespace (for callers without
 * privilege, inside a user namespace of its own) that a process of nsbox's
 * keeps (see _hub.py). Wiring a sandbox takes CAP_NET_ADMIN over the hub's
 * net namespace *and* the sandbox's, and the netlink socket that asks for it
 * must live in one and have been opened by a process capable in both.
 *
 * The hop makes that possible for everyone. It is cloned by the caller
 * (CLONE_VM|CLONE_VFORK|CLONE_FILES: no copy of the caller's memory, and the
 * caller sleeps until the sandbox has exec'd, as without a network); it enters
 * the hub's user namespace (if it has one) and net namespace, opens a netlink
 * socket there, and clones the setup child as the caller's own child
 * (CLONE_PARENT), whose new user namespace is then a child of the hub's. Being
 * root in the hub's user namespace, the hop is capable in the sandbox's too:
 * it creates the veth pair with one end on the bridge and the other, eth0,
 * straight in the sandbox's namespace (no interface ever appears in the
 * caller's namespace), and tells the child, which meanwhile builds its
 * filesystem. The child then addresses eth0 through a socket of its own.
 *
 * Both run in the caller's address space at once: the hop therefore uses raw
 * system calls only (rawsys.h), which leave errno, shared with the child,
 * alone. Stage NSBOX_STAGE_NETWORK's index says which step failed:
 *   0 enter the hub's user namespace   5 find eth0
 *   1 enter the hub's net namespace    6 turn IPv6 address generation off
 *   2 open the hub's netlink socket    7 address eth0
 *   3 create the veth pair             8 bring eth0 up
 *   4 open the sandbox's netlink socket 9 add the default route
 *  10 route the address to its bridge in the hub
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "nsbox.h"
#include "child.h"
#include "rawsys.h"

#ifdef NSBOX_HAVE_RAWSYS
#include <asm/unistd.h>
#define RAW(n, a, b, c, d, e, f) \
    nsbox_raw_syscall6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))
#else
#define RAW(n, a, b, c, d, e, f) (-(long)ENOSYS)
#endif

#define NL_BUF 512

/* A netlink request being built in a caller-provided buffer (no malloc). */
struct nl_req {
    union {
        struct nlmsghdr h;
        char buf[NL_BUF];
    } u;
};

static void *nl_tail(struct nl_req *r)
{
    return r->u.buf + NLMSG_ALIGN(r->u.h.nlmsg_len);
}

static void nl_start(struct nl_req *r, int type, int flags, const void *hdr, size_t len)
{
    memset(r, 0, sizeof *r);
    r->u.h.nlmsg_len = (uint32_t)NLMSG_LENGTH(len);
    r->u.h.nlmsg_type = (uint16_t)type;
    r->u.h.nlmsg_flags = (uint16_t)(NLM_F_REQUEST | NLM_F_ACK | flags);
    r->u.h.nlmsg_seq = 1;
    memcpy(NLMSG_DATA(&r->u.h), hdr, len);
}

static struct rtattr *nl_put(struct nl_req *r, int type, const void *data, size_t len)
{
    struct rtattr *a = nl_tail(r);
    a->rta_type = (unsigned short)type;
    a->rta_len = (unsigned short)RTA_LENGTH(len);
    if (len)
        memcpy(RTA_DATA(a), data, len);
    r->u.h.nlmsg_len = (uint32_t)(NLMSG_ALIGN(r->u.h.nlmsg_len) + RTA_ALIGN(a->rta_len));
    return a;
}

static void nl_put_raw(struct nl_req *r, const void *data, size_t len)
{
    memcpy(nl_tail(r), data, len);
    r->u.h.nlmsg_len = (uint32_t)(NLMSG_ALIGN(r->u.h.nlmsg_len) + NLMSG_ALIGN(len));
}

static void nl_end(struct nl_req *r, struct rtattr *nest)
{
    nest->rta_len = (unsigned short)((char *)nl_tail(r) - (char *)nest);
}

/* Send one request and read its acknowledgement: 0 or -errno. */
static int nl_talk(int fd, struct nl_req *r)
{
    long n = RAW(__NR_sendto, fd, r->u.buf, r->u.h.nlmsg_len, 0, NULL, 0);
    if (n < 0)
        return (int)n;
    union {
        struct nlmsghdr h;
        char buf[NL_BUF];
    } ack;
    for (;;) {
        n = RAW(__NR_recvfrom, fd, ack.buf, sizeof ack.buf, 0, NULL, NULL);
        if (n == -EINTR)
            continue;
        if (n < 0)
            return (int)n;
        if ((size_t)n < sizeof(struct nlmsghdr) + sizeof(struct nlmsgerr))
            return -EPROTO;
        if (ack.h.nlmsg_type != NLMSG_ERROR)
            continue;
        const struct nlmsgerr *e = NLMSG_DATA(&ack.h);
        return e->error;
    }
}

/* The veth pair: its hub end named net_host_if, on the bridge and up; eth0 in
 * the namespace of process `pid` (the setup child). */
static int wire_veth(const struct nsbox_spec *s, int fd, int pid)
{
    struct nl_req r;
    const uint32_t one = 1;
    struct ifinfomsg ifi;
    memset(&ifi, 0, sizeof ifi);
    ifi.ifi_family = AF_UNSPEC;
    ifi.ifi_flags = IFF_UP;
    ifi.ifi_change = IFF_UP;
    nl_start(&r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifi, sizeof ifi);
    nl_put(&r, IFLA_IFNAME, s->net_host_if, strlen(s->net_host_if) + 1);
    nl_put(&r, IFLA_MASTER, &s->net_bridge, sizeof s->net_bridge);
    /* One queue each way, asked for: a veth left to its default gets a queue
     * per CPU and is then cut down to one after registration, which waits for
     * an RCU grace period under the rtnl lock (a long wait while the machine
     * tears down namespaces by the thousand). */
    nl_put(&r, IFLA_NUM_TX_QUEUES, &one, sizeof one);
    nl_put(&r, IFLA_NUM_RX_QUEUES, &one, sizeof one);
    struct rtattr *info = nl_put(&r, IFLA_LINKINFO, NULL, 0);
    nl_put(&r, IFLA_INFO_KIND, "veth", 4);
    struct rtattr *data = nl_put(&r, IFLA_INFO_DATA, NULL, 0);
    struct rtattr *peer = nl_put(&r, VETH_INFO_PEER, NULL, 0);
    struct ifinfomsg pifi;
    memset(&pifi, 0, sizeof pifi);
    pifi.ifi_family = AF_UNSPEC;
    nl_put_raw(&r, &pifi, sizeof pifi);
    nl_put(&r, IFLA_IFNAME, "eth0", 5);
    /* eth0's MAC follows from its address (02:42:a:b:c:d, as docker's): an
     * address handed to another sandbox keeps its MAC, so the neighbours that
     * talked to the last one have no stale ARP entry to wait out. */
    unsigned char mac[6] = {0x02, 0x42, 0, 0, 0, 0};
    memcpy(mac + 2, &s->net_addr, 4);
    nl_put(&r, IFLA_ADDRESS, mac, sizeof mac);
    nl_put(&r, IFLA_NUM_TX_QUEUES, &one, sizeof one);
    nl_put(&r, IFLA_NUM_RX_QUEUES, &one, sizeof one);
    uint32_t target = (uint32_t)pid;
    nl_put(&r, IFLA_NET_NS_PID, &target, sizeof target);
    nl_end(&r, peer);
    nl_end(&r, data);
    nl_end(&r, info);
    return nl_talk(fd, &r);
}

/* A network's sandboxes may sit on several bridges (a bridge takes at most
 * 1024 ports): the hub routes each address to its own bridge, and answers ARP
 * across bridges (proxy_arp), so the network stays one subnet. REPLACE: an
 * address reused from another bridge moves with it. */
/* An IPv4 route in the main table: to dst/dst_len (NULL: default) through
 * gateway (NULL: on the link) out of oif. */
static int add_route(int fd, int flags, const uint32_t *dst, unsigned dst_len,
                     const uint32_t *gateway, uint32_t oif)
{
    struct nl_req r;
    struct rtmsg rt;
    memset(&rt, 0, sizeof rt);
    rt.rtm_family = AF_INET;
    rt.rtm_dst_len = (unsigned char)dst_len;
    rt.rtm_table = RT_TABLE_MAIN;
    rt.rtm_protocol = RTPROT_BOOT;
    rt.rtm_scope = gateway ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK;
    rt.rtm_type = RTN_UNICAST;
    nl_start(&r, RTM_NEWROUTE, NLM_F_CREATE | flags, &rt, sizeof rt);
    if (dst)
        nl_put(&r, RTA_DST, dst, 4);
    if (gateway)
        nl_put(&r, RTA_GATEWAY, gateway, 4);
    nl_put(&r, RTA_OIF, &oif, 4);
    return nl_talk(fd, &r);
}

static int route_address(const struct nsbox_spec *s, int fd)
{
    return add_route(fd, NLM_F_REPLACE, &s->net_addr, 32, NULL, (uint32_t)s->net_bridge);
}

static void release_child(struct nsbox_ctx *ctx, int32_t go, int index)
{
    ctx->go_index = index;
    __atomic_store_n(&ctx->go, go, __ATOMIC_SEQ_CST);
    RAW(__NR_futex, &ctx->go, FUTEX_WAKE, 1, NULL, NULL, 0);
}

NSBOX_HIDDEN int nsbox_hop_main(void *arg)
{
    struct nsbox_ctx *ctx = arg;
    const struct nsbox_spec *s = ctx->spec;
    long rc;
    ctx->stage = NSBOX_STAGE_NETWORK;
    if (s->net_userns_fd >= 0) {
        rc = RAW(__NR_setns, s->net_userns_fd, CLONE_NEWUSER, 0, 0, 0, 0);
        if (rc < 0) {
            ctx->err = (int32_t)-rc;
            return 1;
        }
    }
    rc = RAW(__NR_setns, s->net_hub_fd, CLONE_NEWNET, 0, 0, 0, 0);
    if (rc < 0) {
        ctx->err = (int32_t)-rc;
        return 1;
    }
    long nl = RAW(__NR_socket, AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE, 0, 0, 0);
    if (nl < 0) {
        ctx->err = (int32_t)-nl;
        return 1;
    }

    struct clone3_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = ctx->flags;
    ca.pidfd = (uint64_t)(uintptr_t)&ctx->pidfd;
    ca.child_tid = (uint64_t)(uintptr_t)&ctx->child_tid;
    /* Set before clone3 returns (CLONE_PARENT_SETTID), not when the child
     * first runs: else we could see 0 and leave before the child has even
     * started on the stack the caller is about to unmap. */
    ca.parent_tid = (uint64_t)(uintptr_t)&ctx->child_tid;
    ca.stack = (uint64_t)(uintptr_t)ctx->stack;
    ca.stack_size = ctx->stack_size;
    if (s->cgroup_dirfd >= 0) {
        ca.flags |= CLONE_INTO_CGROUP;
        ca.cgroup = (uint64_t)s->cgroup_dirfd;
    }
    long pid = nsbox_clone3(&ca, sizeof ca, nsbox_child_main, ctx);
    if (pid < 0) {
        ctx->stage = NSBOX_STAGE_CLONE;
        ctx->err = (int32_t)-pid;
        RAW(__NR_close, nl, 0, 0, 0, 0, 0);
        return 1;
    }
    ctx->pid = (int32_t)pid;

    int index = 3;
    int err = s->debug_fail_stage == NSBOX_STAGE_NETWORK ? -s->debug_fail_errno
                                                          : wire_veth(s, (int)nl, (int)pid);
    if (err == 0) {
        index = 10;
        err = route_address(s, (int)nl);
    }
    RAW(__NR_close, nl, 0, 0, 0, 0, 0);
    release_child(ctx, err < 0 ? err : 1, index);
    /* Stay (and keep the caller asleep) until the child has left our memory. */
    int32_t tid;
    while ((tid = __atomic_load_n(&ctx->child_tid, __ATOMIC_SEQ_CST)) != 0)
        RAW(__NR_futex, &ctx->child_tid, FUTEX_WAIT, tid, NULL, NULL, 0);
    return 0;
}

/* In the setup child, once eth0 is here: no IPv6 (no link-local address, no
 * multicast listener reports on the bridge), the address, up, the route. */
NSBOX_HIDDEN int nsbox_net_inside(const struct nsbox_spec *s, int *index)
{
    *index = 4;
    long fd = RAW(__NR_socket, AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE, 0, 0, 0);
    if (fd < 0)
        return (int)-fd;
    int err = 0;
    struct nl_req r;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "eth0", 5);
    *index = 5;
    long rc = RAW(__NR_ioctl, fd, SIOCGIFINDEX, &ifr, 0, 0, 0);
    if (rc < 0) {
        err = (int)-rc;
        goto out;
    }
    int ifindex = ifr.ifr_ifindex;

    struct ifinfomsg ifi;
    memset(&ifi, 0, sizeof ifi);
    ifi.ifi_family = AF_UNSPEC;
    ifi.ifi_index = ifindex;
    *index = 6;
    nl_start(&r, RTM_NEWLINK, 0, &ifi, sizeof ifi);
    struct rtattr *af = nl_put(&r, IFLA_AF_SPEC, NULL, 0);
    struct rtattr *in6 = nl_put(&r, AF_INET6, NULL, 0);
    uint8_t mode = IN6_ADDR_GEN_MODE_NONE;
    nl_put(&r, IFLA_INET6_ADDR_GEN_MODE, &mode, 1);
    nl_end(&r, in6);
    nl_end(&r, af);
    err = -nl_talk((int)fd, &r);
    if (err == EAFNOSUPPORT || err == EOPNOTSUPP)
        err = 0; /* a kernel without IPv6 */
    if (err)
        goto out;

    struct ifaddrmsg ifa;
    memset(&ifa, 0, sizeof ifa);
    ifa.ifa_family = AF_INET;
    ifa.ifa_prefixlen = (unsigned char)s->net_prefix;
    ifa.ifa_index = (unsigned)ifindex;
    *index = 7;
    nl_start(&r, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &ifa, sizeof ifa);
    nl_put(&r, IFA_LOCAL, &s->net_addr, 4);
    nl_put(&r, IFA_ADDRESS, &s->net_addr, 4);
    if ((err = -nl_talk((int)fd, &r)))
        goto out;

    ifi.ifi_flags = IFF_UP;
    ifi.ifi_change = IFF_UP;
    *index = 8;
    nl_start(&r, RTM_NEWLINK, 0, &ifi, sizeof ifi);
    if ((err = -nl_talk((int)fd, &r)))
        goto out;

    *index = 9;
    err = -add_route((int)fd, NLM_F_EXCL, NULL, 0, &s->net_gateway, (uint32_t)ifindex);
out:
    RAW(__NR_close, fd, 0, 0, 0, 0, 0);
    return err;
}
