/*
 * nsbox.h - the C API of nsbox's native core.
 *
 * The region between NSBOX_CDEF_BEGIN and NSBOX_CDEF_END is fed verbatim to
 * cffi's cdef() by build_ffi.py: it is the one source of truth for stages,
 * report records and the spec layout, shared by spawn.c, child.c, init.c and
 * Python. Keep it to what cffi can parse: plain integer #defines, enums with
 * explicit values, structs of fixed-size fields, prototypes.
 */
#ifndef NSBOX_H
#define NSBOX_H

#include <stdint.h>

/* NSBOX_CDEF_BEGIN */
#define NSBOX_ABI_VERSION 4
#define NSBOX_REPORT_MAGIC 1313096241

/* Setup stages, in the order the child runs them. A failure record names one. */
enum nsbox_stage {
    NSBOX_STAGE_NONE = 0,
    NSBOX_STAGE_CLONE = 1,        /* parent: clone3/clone */
    NSBOX_STAGE_PARENT_DEATH = 2, /* child: PR_SET_PDEATHSIG and the parent check */
    NSBOX_STAGE_CGROUP = 3,       /* child: join the sandbox's cgroup(s), then a cgroup ns */
    NSBOX_STAGE_SETGROUPS = 4,    /* child: /proc/self/setgroups */
    NSBOX_STAGE_UID_MAP = 5,      /* child: /proc/self/uid_map */
    NSBOX_STAGE_GID_MAP = 6,      /* child: /proc/self/gid_map */
    NSBOX_STAGE_MOUNT_PRIVATE = 7,/* child: make / private */
    NSBOX_STAGE_ROOT = 8,         /* child: clone the root tree, read-only */
    NSBOX_STAGE_MOUNT = 9,        /* child: mount op [index] */
    NSBOX_STAGE_PIVOT_ROOT = 10,  /* child: pivot_root and detach the old root */
    NSBOX_STAGE_HOSTNAME = 11,    /* child: sethostname */
    NSBOX_STAGE_LOOPBACK = 12,    /* child: bring lo up */
    NSBOX_STAGE_CAPS = 13,        /* child: capability bounding set, no_new_privs */
    NSBOX_STAGE_SETID = 14,       /* child: setgroups/setresgid/setresuid (no userns) */
    NSBOX_STAGE_FDS = 15,         /* child: stdio and fds to keep */
    NSBOX_STAGE_CHDIR = 16,       /* child: working directory */
    NSBOX_STAGE_EXEC_INIT = 17,   /* child: execveat of nsbox-init */
    NSBOX_STAGE_INIT = 18,        /* init: its own setup (signalfd, vfork) */
    NSBOX_STAGE_RLIMIT = 19,      /* init: the command's rlimit [index] */
    NSBOX_STAGE_EXEC = 20,        /* init: execve of the command */
    NSBOX_STAGE_NETWORK = 21,     /* hop/child: the network's veth [index: see net.c] */
    NSBOX_STAGE_COUNT = 22
};

enum nsbox_report_kind {
    NSBOX_REPORT_ERROR = 1,   /* stage, err, index: setup failed, nothing runs */
    NSBOX_REPORT_STARTED = 2, /* value: the command's pid inside the sandbox */
    NSBOX_REPORT_EXITED = 3,  /* value: the command's wait status; index: peak RSS, KiB */
    NSBOX_REPORT_TIME = 4     /* stage: a phase; index, value: high, low 32 bits of its ns */
};

/* One fixed-size record, written with a single write(2). */
struct nsbox_report {
    uint32_t magic;
    int32_t kind;
    int32_t stage;
    int32_t err;
    int32_t index;
    int32_t value;
};

/* Phase timestamps (CLOCK_MONOTONIC, ns), when the caller asks for them:
 * spawn.c and child.c write them into spec->timings (the child shares the
 * caller's memory until it execs), init.c sends its own as TIME records. */
enum nsbox_phase {
    NSBOX_PHASE_CLONE = 0,      /* parent: just before clone3 */
    NSBOX_PHASE_CHILD = 1,      /* child: first instruction of setup */
    NSBOX_PHASE_CGROUP = 2,     /* child: in its cgroup */
    NSBOX_PHASE_ID_MAP = 3,     /* child: id maps written */
    NSBOX_PHASE_MOUNTS = 4,     /* child: filesystem built (pivot_root done, if any) */
    NSBOX_PHASE_NETWORK = 5,    /* child: hostname set, loopback (and eth0) up */
    NSBOX_PHASE_PRIVILEGES = 6, /* child: capabilities dropped, ids set */
    NSBOX_PHASE_EXEC_INIT = 7,  /* child: fds and cwd ready, execveat of nsbox-init */
    NSBOX_PHASE_SPAWNED = 8,    /* parent: clone returned (the child has exec'd) */
    NSBOX_PHASE_INIT = 9,       /* init: started (TIME record) */
    NSBOX_PHASE_EXEC = 10,      /* init: the command's execve succeeded (TIME record) */
    NSBOX_PHASE_EXITED = 11,    /* init: the command reaped (TIME record) */
    NSBOX_PHASE_COUNT = 12
};

#define NSBOX_NS_USER 1
#define NSBOX_NS_MOUNT 2
#define NSBOX_NS_PID 4
#define NSBOX_NS_UTS 8
#define NSBOX_NS_IPC 16
#define NSBOX_NS_NET 32
#define NSBOX_NS_CGROUP 64

enum nsbox_mount_kind {
    NSBOX_MNT_BIND = 1,  /* src (host path) -> dst */
    NSBOX_MNT_TMPFS = 2, /* fresh tmpfs at dst: size, mode */
    NSBOX_MNT_PROC = 3,  /* fresh proc at dst */
    NSBOX_MNT_DEV = 4    /* minimal /dev at dst */
};

#define NSBOX_MF_READONLY 1   /* recursively read-only */
#define NSBOX_MF_IN_SCRATCH 2 /* dst lies in a tmpfs nsbox made: mkdir missing parts there */

struct nsbox_mount {
    int32_t kind;
    uint32_t flags;
    const char *src;  /* absolute host path (bind) */
    const char *dst;  /* path inside the new root, no leading slash */
    const char *size; /* tmpfs size in bytes, decimal, or NULL */
    const char *mode; /* tmpfs mode, octal, or NULL */
};

#define NSBOX_CWD_REQUIRED 1  /* fail if cwd is missing, else fall back to / */

struct nsbox_spec {
    uint32_t abi_version;
    uint32_t namespaces;           /* NSBOX_NS_* */
    char *const *init_argv;        /* argv for nsbox-init (it carries the command) */
    char *const *envp;             /* the command's environment */
    int32_t init_fd;               /* O_PATH fd of the nsbox-init executable */
    int32_t report_fd;             /* write end of the report pipe */
    int32_t parent_pidfd;          /* pidfd of the caller's process, or -1 */
    int32_t stdio[3];              /* fds for 0, 1, 2; -1 keeps the caller's */
    const int32_t *keep_fds;       /* fds the command receives as they are */
    uint32_t n_keep_fds;
    const char *root;              /* tree to clone as /, or NULL: no filesystem setup */
    uint32_t root_flags;           /* NSBOX_MF_READONLY */
    const struct nsbox_mount *mounts;
    uint32_t n_mounts;
    const char *uid_map;           /* written to /proc/self/uid_map (userns) */
    const char *gid_map;
    int64_t setid_uid;             /* without userns: setresuid to this, or -1 */
    int64_t setid_gid;
    const char *hostname;          /* or NULL */
    const char *cwd;               /* or NULL: / */
    uint32_t cwd_flags;            /* NSBOX_CWD_* */
    uint64_t keep_caps;            /* capabilities left in the bounding set (bit = cap) */
    const int32_t *cgroup_procs;   /* cgroup v1: `tasks` fds the child writes "0" to */
    uint32_t n_cgroup_procs;
    int32_t cgroup_dirfd;          /* cgroup v2: the cgroup to clone into (CLONE_INTO_CGROUP), or -1 */
    uint64_t *timings;             /* NSBOX_PHASE_COUNT slots, or NULL: no timestamps */
    /* A network (see net.c): the sandbox's eth0 is one end of a veth pair
     * whose other end joins the bridge in the network's hub namespace. */
    int32_t net_hub_fd;            /* the hub's net namespace, or -1: no network */
    int32_t net_userns_fd;         /* the hub's own user namespace, or -1 */
    int32_t net_bridge;            /* ifindex of the hub's bridge */
    const char *net_host_if;       /* name of the veth's end in the hub */
    uint32_t net_addr;             /* the sandbox's IPv4 address, network byte order */
    uint32_t net_gateway;          /* its default gateway, network byte order */
    uint32_t net_prefix;           /* the subnet's prefix length */
    int32_t debug_fail_stage;      /* tests: make this stage fail ... */
    int32_t debug_fail_errno;      /* ... with this errno */
};

struct nsbox_child {
    int32_t pid;
    int32_t pidfd;
    int32_t stage;  /* on failure: the stage that failed (NSBOX_STAGE_CLONE) */
    int32_t err;    /* on failure: errno */
};

/* Start a sandbox. 0 and *out filled on success; -1 with out->stage/err on failure. */
int nsbox_spawn(const struct nsbox_spec *spec, struct nsbox_child *out);
/* NSBOX_CDEF_END */

/* Exit status of a setup child that reported a failure record. */
#define NSBOX_EXIT_SETUP 125

/* Raw syscalls that glibc 2.36 lacks wrappers for (or wraps inconsistently). */
#endif
