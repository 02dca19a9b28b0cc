/*
 * spawn.c - the parent side: clone3(CLONE_VM|CLONE_VFORK|CLONE_PIDFD|ns) onto
 * a private stack, so the cost of starting a sandbox does not grow with the
 * caller's memory, and hand back pid and pidfd. Falls back to clone(2) where
 * clone3 is missing (or on architectures without our trampoline).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "nsbox.h"
#include "sys.h"
#include "child.h"

#if defined(__x86_64__)
/*
 * clone3 with a new stack cannot return through a C function in the child:
 * the child starts on an empty stack. Call fn there and exit with its result.
 * Returns the child's pid or -errno in the parent.
 */
NSBOX_HIDDEN long nsbox_clone3(void *args, unsigned long size, int (*fn)(void *), void *arg)
{
    long ret;
    register void *r12 __asm__("r12") = (void *)fn;
    register void *r13 __asm__("r13") = arg;
    __asm__ __volatile__("syscall\n\t"
                         "testq %%rax, %%rax\n\t"
                         "jnz 1f\n\t"
                         "xorl %%ebp, %%ebp\n\t"
                         "movq %%r13, %%rdi\n\t"
                         "callq *%%r12\n\t"
                         "movl %%eax, %%edi\n\t"
                         "movl $60, %%eax\n\t"
                         "syscall\n\t"
                         "hlt\n"
                         "1:\n\t"
                         : "=a"(ret)
                         : "0"((long)SYS_clone3), "D"(args), "S"(size), "r"(r12), "r"(r13)
                         : "rcx", "r11", "memory", "cc");
    return ret;
}
#else
NSBOX_HIDDEN long nsbox_clone3(void *args, unsigned long size, int (*fn)(void *), void *arg)
{
    (void)args;
    (void)size;
    (void)fn;
    (void)arg;
    return -ENOSYS;
}
#endif

/* The cgroup namespace is made by the child once it is in its cgroup (see
 * join_cgroup), so that the sandbox's cgroup is its root: a new cgroup
 * namespace is rooted where the process is when the namespace is made. */
static int joins_cgroup(const struct nsbox_spec *spec)
{
    return spec->cgroup_dirfd >= 0 || spec->n_cgroup_procs > 0;
}

static unsigned long clone_flags(uint32_t ns, int late_cgroup_ns)
{
    unsigned long f = CLONE_VM | CLONE_VFORK | CLONE_PIDFD;
    if (ns & NSBOX_NS_USER)
        f |= CLONE_NEWUSER;
    if (ns & NSBOX_NS_MOUNT)
        f |= CLONE_NEWNS;
    if (ns & NSBOX_NS_PID)
        f |= CLONE_NEWPID;
    if (ns & NSBOX_NS_UTS)
        f |= CLONE_NEWUTS;
    if (ns & NSBOX_NS_IPC)
        f |= CLONE_NEWIPC;
    if (ns & NSBOX_NS_NET)
        f |= CLONE_NEWNET;
    if ((ns & NSBOX_NS_CGROUP) && !late_cgroup_ns)
        f |= CLONE_NEWCGROUP;
    return f;
}

/* With a network, the caller clones the hop (net.c), which clones the setup
 * child as the caller's own child (CLONE_PARENT) and wires it. The hop shares
 * the caller's fd table, so the child's pidfd lands in the caller's. */
static long spawn_via_hop(struct nsbox_ctx *ctx, char *hop_stack)
{
    ctx->flags = (ctx->flags & ~(unsigned long)CLONE_VFORK) | CLONE_PARENT |
                 CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID;
    struct clone3_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_VM | CLONE_VFORK | CLONE_FILES;
    ca.exit_signal = SIGCHLD; /* the child inherits it: CLONE_PARENT */
    ca.stack = (uint64_t)(uintptr_t)hop_stack;
    ca.stack_size = CHILD_STACK_SIZE;
    long hop = nsbox_clone3(&ca, sizeof ca, nsbox_hop_main, ctx);
    if (hop == -ENOSYS)
        hop = clone(nsbox_hop_main, hop_stack + CHILD_STACK_SIZE,
                    CLONE_VM | CLONE_VFORK | CLONE_FILES | SIGCHLD, ctx);
    if (hop < 0)
        return hop == -1 ? -errno : hop;
    int status;
    while (waitpid((pid_t)hop, &status, __WALL) < 0 && errno == EINTR)
        ;
    return ctx->pid > 0 ? ctx->pid : -(ctx->err ? ctx->err : EIO);
}

int nsbox_spawn(const struct nsbox_spec *spec, struct nsbox_child *out)
{
    out->pid = -1;
    out->pidfd = -1;
    out->stage = NSBOX_STAGE_CLONE;
    out->err = 0;
    if (spec->abi_version != NSBOX_ABI_VERSION) {
        out->err = EINVAL;
        return -1;
    }
    if (spec->debug_fail_stage == NSBOX_STAGE_CLONE) {
        out->err = spec->debug_fail_errno;
        return -1;
    }
    int hop = spec->net_hub_fd >= 0;
    size_t map_size = hop ? 2 * CHILD_STACK_SIZE : CHILD_STACK_SIZE;
    char *stack = mmap(NULL, map_size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
    if (stack == MAP_FAILED) {
        out->err = errno;
        return -1;
    }
    /* No signal handler of the caller may run on the child's side. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);

    struct nsbox_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.spec = spec;
    ctx.stack = stack;
    ctx.stack_size = CHILD_STACK_SIZE;
    ctx.flags = clone_flags(spec->namespaces, joins_cgroup(spec));
    ctx.pid = -1;
    ctx.pidfd = -1;
    ctx.stage = NSBOX_STAGE_CLONE;
    long pid;
    int err;
    mark_phase(spec->timings, NSBOX_PHASE_CLONE);
    if (hop) {
        pid = spawn_via_hop(&ctx, stack + CHILD_STACK_SIZE);
        err = pid < 0 ? (int)-pid : 0;
    } else {
        struct clone3_args ca;
        memset(&ca, 0, sizeof ca);
        ca.flags = ctx.flags;
        ca.pidfd = (uint64_t)(uintptr_t)&ctx.pidfd;
        ca.exit_signal = SIGCHLD;
        ca.stack = (uint64_t)(uintptr_t)stack;
        ca.stack_size = CHILD_STACK_SIZE;
        if (spec->cgroup_dirfd >= 0) {
            /* cgroup v2: the child starts in its cgroup, before running anything. */
            ca.flags |= CLONE_INTO_CGROUP;
            ca.cgroup = (uint64_t)spec->cgroup_dirfd;
        }
        pid = nsbox_clone3(&ca, sizeof ca, nsbox_child_main, &ctx);
        err = pid < 0 ? (int)-pid : 0;
        if (err == ENOSYS && spec->cgroup_dirfd < 0) {
            int fd = -1;
            pid = clone(nsbox_child_main, stack + CHILD_STACK_SIZE, (int)(ctx.flags | SIGCHLD),
                        &ctx, &fd);
            err = pid < 0 ? errno : 0;
            ctx.pidfd = fd;
        }
        ctx.stage = NSBOX_STAGE_CLONE;
    }
    mark_phase(spec->timings, NSBOX_PHASE_SPAWNED);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    munmap(stack, map_size);
    if (pid < 0) {
        out->stage = ctx.stage;
        out->err = err;
        return -1;
    }
    out->pid = (int32_t)pid;
    out->pidfd = ctx.pidfd;
    out->stage = NSBOX_STAGE_NONE;
    return 0;
}
