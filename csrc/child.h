/* child.h - what spawn.c, child.c and net.c share: the setup child's context. */
#ifndef NSBOX_CHILD_H
#define NSBOX_CHILD_H
#include "nsbox.h"
#include "sys.h"

#define CHILD_STACK_SIZE (256 * 1024)

struct clone3_args {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
    uint64_t set_tid;
    uint64_t set_tid_size;
    uint64_t cgroup;
};

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

/*
 * The setup child's argument, on the caller's stack (the caller is suspended
 * until the child execs: CLONE_VFORK). With a network, a "hop" process sits
 * between them (see net.c): it clones the child, wires its veth and tells it
 * through `go`, then waits for `child_tid` to clear (the child exec'd or died).
 */
struct nsbox_ctx {
    const struct nsbox_spec *spec;
    char *stack;                /* top of the setup child's stack */
    size_t stack_size;
    unsigned long flags;        /* the setup child's clone flags */
    int32_t pid;                /* out: the setup child */
    int32_t pidfd;
    int32_t stage;              /* out, on failure before the child exists */
    int32_t err;
    volatile int32_t go;        /* network: 0 wiring, 1 wired, -errno: failed at go_index */
    int32_t go_index;
    volatile int32_t child_tid; /* network: cleared by the kernel when the child execs or exits */
};

NSBOX_HIDDEN int nsbox_child_main(void *arg);
NSBOX_HIDDEN int nsbox_hop_main(void *arg);
NSBOX_HIDDEN long nsbox_clone3(void *args, unsigned long size, int (*fn)(void *), void *arg);
NSBOX_HIDDEN int nsbox_net_inside(const struct nsbox_spec *s, int *index);
#endif
