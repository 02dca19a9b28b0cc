/*
 * init.c - nsbox-init, pid 1 of every sandbox (a small static executable).
 *
 *   nsbox-init REPORT_FD PARENT_PIDFD FLAGS FAIL_STAGE FAIL_ERRNO RLIMITS CGROUP -- CMD [ARGS...]
 *
 * RLIMITS is "-" or a comma-separated list of RESOURCE:SOFT:HARD (decimal,
 * -1 for unlimited), applied to the command alone: init itself needs a few
 * fds more than a tiny RLIMIT_NOFILE would leave it.
 *
 * With INIT_PARKED in FLAGS, CMD is the number of a SOCK_SEQPACKET socket: the
 * sandbox is a warm-pool slot, set up and waiting. One message on it brings the
 * per-run parts (see park) and the command starts as usual; EOF or a signal
 * ends the slot unused.
 *
 * CGROUP is "-" or NAME,ESCAPE_FD:PARENT_FD,... for a sandbox with a cgroup
 * (one pair per hierarchy): if the caller dies, nobody is left to remove the
 * cgroup, so init does: it kills and reaps every process of the sandbox,
 * moves itself out by writing "0" to ESCAPE_FD (a cgroup.procs or tasks file
 * the caller opened) and removes NAME below PARENT_FD.
 *
 * Starts the command with vfork+execve (PATH searched inside the sandbox),
 * reports STARTED or the exec error on the report pipe, forwards the usual
 * termination and job signals to it, reaps every orphan, and when the command
 * ends reports its wait status as an EXITED record and exits. A pid 1 cannot
 * die of its own signals, so the record is how a signal death reaches the
 * caller intact. If the caller's process dies, the sandbox dies with it.
 *
 * Built freestanding where initrt.h can (see there): no libc calls here.
 */
#include "initrt.h"
#include "nsbox.h"

#define INIT_PID1 1  /* we are pid 1 of a new pid namespace */
#define INIT_TIMES 2 /* report phase timestamps as TIME records */
#define INIT_PARKED 4 /* a warm-pool slot: wait for the command on a socket (see park) */

static const int forwarded[] = {RT_SIGTERM, RT_SIGINT,  RT_SIGHUP,   RT_SIGQUIT,
                                RT_SIGUSR1, RT_SIGUSR2, RT_SIGWINCH, RT_SIGCONT};

static int report_fd = -1;
static char **environ_;

static long parse_int(const char *s)
{
    long v = 0;
    int neg = 0;
    if (*s == '-') {
        neg = 1;
        s++;
    }
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (*s++ - '0');
    return neg ? -v : v;
}

static const char *get_env(const char *name)
{
    size_t n = rt_strlen(name);
    for (char **e = environ_; *e; e++) {
        const char *v = *e;
        size_t i = 0;
        while (i < n && v[i] == name[i])
            i++;
        if (i == n && v[n] == '=')
            return v + n + 1;
    }
    return NULL;
}

/*
 * execve the command, searching PATH (from its own environment) when it has
 * no '/'. Returns the errno to report: ENOENT only if the command exists
 * nowhere (an unsearchable PATH directory is not "found but not executable",
 * unlike execvpe's rule), EACCES if some candidate exists but cannot run.
 * No shell fallback for ENOEXEC, as in Python's subprocess.
 */
static int exec_command(char **cmd)
{
    const char *file = cmd[0];
    if (rt_strchr(file, '/'))
        return (int)-rt_execve(file, cmd, environ_);
    const char *path = get_env("PATH");
    if (!path)
        path = "/bin:/usr/bin";
    size_t flen = rt_strlen(file);
    int result = RT_ENOENT;
    char buf[4096];
    for (const char *p = path;; p++) {
        const char *end = rt_strchr(p, ':');
        size_t dlen = end ? (size_t)(end - p) : rt_strlen(p);
        const char *dir = dlen ? p : ".";
        if (!dlen)
            dlen = 1;
        if (dlen + flen + 2 <= sizeof buf) {
            rt_copy(buf, dir, dlen);
            buf[dlen] = '/';
            rt_copy(buf + dlen + 1, file, flen + 1);
            int err = (int)-rt_execve(buf, cmd, environ_);
            if (err == RT_EACCES) {
                if (rt_exists(buf) == 0)
                    result = RT_EACCES; /* there, but not executable: keep looking */
            } else if (err != RT_ENOENT && err != RT_ENOTDIR && err != RT_ESTALE &&
                       err != RT_ENODEV && err != RT_ELOOP && err != RT_ENAMETOOLONG) {
                return err; /* found, and it failed for a reason of its own */
            }
        }
        if (!end)
            break;
        p = end;
    }
    return result;
}

/* A supervisor's slot for our final record (a shared file, fd:offset), so it
 * need not hold the report pipe of every running sandbox; -1: none. */
static int status_fd = -1;
static long status_off;

static void report(int kind, int stage, int err, int index, int value)
{
    struct nsbox_report r;
    r.magic = NSBOX_REPORT_MAGIC;
    r.kind = kind;
    r.stage = stage;
    r.err = err;
    r.index = index;
    r.value = value;
    if (kind == NSBOX_REPORT_EXITED && status_fd >= 0)
        while (rt_pwrite(status_fd, &r, sizeof r, status_off) == -RT_EINTR)
            ;
    /* The pipe too (its reader may have closed it: EPIPE, SIGPIPE blocked). */
    while (rt_write(report_fd, &r, sizeof r) == -RT_EINTR)
        ;
}

/* "FD:OFFSET" or "-". */
static void parse_status(const char *arg)
{
    if (arg[0] == '-')
        return;
    status_fd = (int)parse_int(arg);
    while (*arg && *arg != ':')
        arg++;
    status_off = *arg ? parse_int(arg + 1) : 0;
}

static long init_flags;

/* A TIME record for `phase`, when asked for: 64 bits of ns in index:value. */
static void mark(int phase)
{
    if (!(init_flags & INIT_TIMES))
        return;
    struct rt_timespec ts;
    rt_clock_gettime(RT_CLOCK_MONOTONIC, &ts);
    uint64_t ns = (uint64_t)ts.sec * 1000000000u + (uint64_t)ts.nsec;
    report(NSBOX_REPORT_TIME, phase, 0, (int)(uint32_t)(ns >> 32), (int)(uint32_t)ns);
}

static __attribute__((noreturn)) void fail(int stage, long err)
{
    report(NSBOX_REPORT_ERROR, stage, (int)-err, 0, 0);
    rt_exit(NSBOX_EXIT_SETUP);
}

/* Exit as init: the code a shell would show for the command's status. */
static __attribute__((noreturn)) void exit_like(int status)
{
    if ((status & 0x7f) != 0 && (status & 0x7f) != 0x7f)
        rt_exit(128 + (status & 0x7f));
    rt_exit((status >> 8) & 0xff);
}

/*
 * In the command's child, before execve: set each RESOURCE:SOFT:HARD of
 * `spec`. Returns 0, or the failing limit's index with its errno in *err.
 */
static int apply_rlimits(const char *spec, long *err)
{
    int index = 0;
    if (rt_streq(spec, "-"))
        return -1;
    while (*spec) {
        long resource = parse_int(spec);
        const char *p = rt_strchr(spec, ':');
        if (!p) {
            *err = -22; /* EINVAL: a malformed list is nsbox's bug */
            return index;
        }
        long soft = parse_int(p + 1);
        p = rt_strchr(p + 1, ':');
        if (!p) {
            *err = -22;
            return index;
        }
        long hard = parse_int(p + 1);
        struct rt_rlimit lim = {.cur = soft < 0 ? ~(uint64_t)0 : (uint64_t)soft,
                                .max = hard < 0 ? ~(uint64_t)0 : (uint64_t)hard};
        long rc = rt_setrlimit((int)resource, &lim);
        if (rc < 0) {
            *err = rc;
            return index;
        }
        index++;
        p = rt_strchr(p, ',');
        if (!p)
            break;
        spec = p + 1;
    }
    return -1;
}

#define MAX_CGROUP_FDS 16
static int cg_escape[MAX_CGROUP_FDS], cg_parent[MAX_CGROUP_FDS], cg_count;
static char cg_name[256];

/* Parse CGROUP (see the top) and make its fds close-on-exec. */
static void parse_cgroup(const char *spec)
{
    if (rt_streq(spec, "-"))
        return;
    size_t n = 0;
    while (spec[n] && spec[n] != ',' && n + 1 < sizeof cg_name) {
        cg_name[n] = spec[n];
        n++;
    }
    cg_name[n] = 0;
    const char *p = rt_strchr(spec, ',');
    while (p && cg_count < MAX_CGROUP_FDS) {
        const char *colon = rt_strchr(p + 1, ':');
        if (!colon)
            break;
        cg_escape[cg_count] = (int)parse_int(p + 1);
        cg_parent[cg_count] = (int)parse_int(colon + 1);
        rt_fcntl(cg_escape[cg_count], RT_F_SETFD, RT_FD_CLOEXEC);
        rt_fcntl(cg_parent[cg_count], RT_F_SETFD, RT_FD_CLOEXEC);
        cg_count++;
        p = rt_strchr(colon, ',');
    }
}

/*
 * The caller died: end the sandbox and leave nothing behind. As pid 1, kill
 * every other process of the namespace and reap them all; then step out of
 * the sandbox's cgroup and remove it. (Without a pid namespace only the
 * command is ours to kill: processes it left would keep the cgroup busy.)
 */
static __attribute__((noreturn)) void caller_gone(long flags, long pid)
{
    /* kill(-1) only as pid 1: there it means every process of our own pid
     * namespace; anywhere else it would mean every process we may signal. */
    if (flags & INIT_PID1)
        rt_kill(-1, RT_SIGKILL);
    else if (pid > 0)
        rt_kill((int)pid, RT_SIGKILL);
    if (cg_count) {
        /* Everything was killed, so this ends (without a pid namespace, wait
         * for the command alone: what else it left may live on). */
        if (flags & INIT_PID1) {
            long w;
            while ((w = rt_wait(-1, NULL, 0)) > 0 || w == -RT_EINTR)
                ;
        } else if (pid > 0) {
            while (rt_wait((int)pid, NULL, 0) == -RT_EINTR)
                ;
        }
        for (int i = 0; i < cg_count; i++)
            rt_write(cg_escape[i], "0", 1);
        for (int i = 0; i < cg_count; i++)
            rt_rmdirat(cg_parent[i], cg_name);
    }
    rt_exit(128 + RT_SIGKILL);
}

/*
 * A parked slot's request, one SOCK_SEQPACKET message:
 *   uint32 nargs, nenv, flags, cwdlen; cwd (cwdlen bytes, NUL-terminated);
 *   nargs then nenv NUL-terminated strings.
 * flags bits 0-2: an fd for stdin/stdout/stderr comes with it (SCM_RIGHTS, in
 * that order); bit 3: cwd is required (else / when it is missing).
 */
#define PARK_CWD_REQUIRED 8
#define PARK_MAX_STRINGS 4096
static char park_buf[256 * 1024];
static char *park_argv[PARK_MAX_STRINGS + 1];
static char *park_envp[PARK_MAX_STRINGS + 1];

static uint32_t get_u32(const char *p)
{
    uint32_t v;
    rt_copy((char *)&v, p, sizeof v);
    return v;
}

/* Point out[0..n) at n NUL-terminated strings from *p (below end); 0 or -1. */
static int take_strings(char **p, const char *end, char **out, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        out[i] = *p;
        while (*p < end && **p)
            (*p)++;
        if (*p >= end)
            return -1;
        (*p)++;
    }
    out[n] = NULL;
    return 0;
}

/* Wait for the request of a parked slot; returns the command's argv. */
static char **park(int ctrl, int parent, int sfd, long flags)
{
    struct rt_pollfd fds[3] = {{.fd = ctrl, .events = RT_POLLIN, .revents = 0},
                               {.fd = sfd, .events = RT_POLLIN, .revents = 0},
                               {.fd = parent, .events = RT_POLLIN, .revents = 0}};
    for (;;) {
        long n = rt_ppoll(fds, parent >= 0 ? 3 : 2, 0);
        if (n == -RT_EINTR)
            continue;
        if (n < 0)
            rt_exit(NSBOX_EXIT_SETUP);
        if (parent >= 0 && fds[2].revents)
            caller_gone(flags, -1);
        if (fds[1].revents) {
            struct rt_siginfo si;
            if (rt_read(sfd, &si, sizeof si) == (long)sizeof si && si.signo != RT_SIGCHLD)
                rt_exit(128 + (int)si.signo); /* the slot was ended unused */
            continue;
        }
        if (fds[0].revents)
            break;
    }
    union {
        struct rt_cmsghdr h;
        char space[sizeof(struct rt_cmsghdr) + 3 * sizeof(int) + 8];
    } control;
    struct rt_iovec iov = {.base = park_buf, .len = sizeof park_buf};
    struct rt_msghdr msg = {.name = NULL, .namelen = 0, .iov = &iov, .iovlen = 1,
                            .control = &control, .controllen = sizeof control, .flags = 0};
    long n = rt_recvmsg(ctrl, &msg, RT_MSG_CMSG_CLOEXEC);
    if (n <= 0)
        rt_exit(0); /* the pool let the slot go */
    int got[3] = {-1, -1, -1}, ngot = 0;
    if (msg.controllen >= sizeof control.h && control.h.level == RT_SOL_SOCKET &&
        control.h.type == RT_SCM_RIGHTS) {
        ngot = (int)((control.h.len - sizeof control.h) / sizeof(int));
        for (int i = 0; i < ngot && i < 3; i++)
            rt_copy((char *)&got[i], control.space + sizeof control.h + i * sizeof(int),
                    sizeof(int));
    }
    if (n < 16)
        rt_exit(NSBOX_EXIT_SETUP);
    uint32_t nargs = get_u32(park_buf), nenv = get_u32(park_buf + 4);
    uint32_t pflags = get_u32(park_buf + 8), cwdlen = get_u32(park_buf + 12);
    const char *end = park_buf + n;
    char *p = park_buf + 16;
    if (nargs < 1 || nargs > PARK_MAX_STRINGS || nenv > PARK_MAX_STRINGS ||
        cwdlen > (uint32_t)(end - p) || (cwdlen && p[cwdlen - 1]))
        rt_exit(NSBOX_EXIT_SETUP);
    const char *cwd = cwdlen > 1 ? p : NULL;
    p += cwdlen;
    if (take_strings(&p, end, park_argv, nargs) < 0 ||
        take_strings(&p, end, park_envp, nenv) < 0)
        rt_exit(NSBOX_EXIT_SETUP);
    /* stdio: the fds that came, in order, onto 0, 1, 2. */
    for (int i = 0, k = 0; i < 3; i++) {
        if (!(pflags & (1u << i)))
            continue;
        if (k >= ngot)
            rt_exit(NSBOX_EXIT_SETUP);
        if (got[k] == i ? rt_fcntl(i, RT_F_SETFD, 0) < 0 : rt_dup3(got[k], i, 0) < 0)
            rt_exit(NSBOX_EXIT_SETUP);
        k++;
    }
    for (int k = 0; k < ngot && k < 3; k++) {
        int used = 0;
        for (int i = 0; i < 3; i++)
            used |= got[k] == i;
        if (!used)
            rt_close(got[k]);
    }
    if (cwd) {
        long rc = rt_chdir(cwd);
        if (rc < 0 && (pflags & PARK_CWD_REQUIRED)) {
            report(NSBOX_REPORT_ERROR, NSBOX_STAGE_CHDIR, (int)-rc, 0, 0);
            rt_exit(NSBOX_EXIT_SETUP);
        }
        if (rc < 0)
            rt_chdir("/");
    }
    rt_close(ctrl);
    environ_ = park_envp;
    return park_argv;
}

static __attribute__((noreturn)) void init_main(int argc, char **argv)
{
    if (argc < 11 || !rt_streq(argv[9], "--"))
        rt_exit(NSBOX_EXIT_SETUP);
    /* The command runs with our uid: without this it could ptrace us or open
     * /proc/1/fd/ and reach our fds (the caller's pidfd, a supervisor's status
     * file). Not dumpable, that takes CAP_SYS_PTRACE, which it lacks. */
    rt_prctl(RT_PR_SET_DUMPABLE, 0);
    report_fd = (int)parse_int(argv[1]);
    int parent = (int)parse_int(argv[2]);
    long flags = parse_int(argv[3]);
    init_flags = flags;
    mark(NSBOX_PHASE_INIT);
    int fail_stage = (int)parse_int(argv[4]);
    int fail_errno = (int)parse_int(argv[5]);
    const char *rlimits = argv[6];
    parse_cgroup(argv[7]);
    parse_status(argv[8]);
    char **cmd = argv + 10;
    long rc;

    /* Signals arrive blocked from the setup child (and are blocked here in
     * any case): none is lost between exec and the signalfd. */
    rt_sigset set = rt_sigbit(RT_SIGCHLD), none = 0;
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        set |= rt_sigbit(forwarded[i]);
    if (fail_stage == NSBOX_STAGE_INIT)
        fail(NSBOX_STAGE_INIT, -fail_errno);
    if ((rc = rt_sigprocmask(RT_SIG_BLOCK, &set)) < 0)
        fail(NSBOX_STAGE_INIT, rc);
    int sfd = (int)rt_signalfd(&set);
    if (sfd < 0)
        fail(NSBOX_STAGE_INIT, sfd);
    if (sfd <= 2) {
        /* The command's stdio slot was free (the caller runs with it closed):
         * 0-2 are closed below, and must not take our signals with them. */
        long high = rt_fcntl(sfd, RT_F_DUPFD_CLOEXEC, 3);
        if (high < 0)
            fail(NSBOX_STAGE_INIT, high);
        rt_close(sfd);
        sfd = (int)high;
    }
    if ((rc = rt_fcntl(report_fd, RT_F_SETFD, RT_FD_CLOEXEC)) < 0)
        fail(NSBOX_STAGE_INIT, rc);
    if (status_fd >= 0 && (rc = rt_fcntl(status_fd, RT_F_SETFD, RT_FD_CLOEXEC)) < 0)
        fail(NSBOX_STAGE_INIT, rc);
    if (parent >= 0) {
        if ((rc = rt_fcntl(parent, RT_F_SETFD, RT_FD_CLOEXEC)) < 0)
            fail(NSBOX_STAGE_INIT, rc);
        /* The pidfd watches the caller's whole process from now on; the
         * death signal would fire when the calling *thread* ends. */
        rt_prctl(RT_PR_SET_PDEATHSIG, 0);
        struct rt_pollfd p = {.fd = parent, .events = RT_POLLIN, .revents = 0};
        if (rt_ppoll(&p, 1, 1) > 0)
            caller_gone(flags, -1);
    }
    if (!(flags & INIT_PID1))
        rt_prctl(RT_PR_SET_CHILD_SUBREAPER, 1);
    if (flags & INIT_PARKED) {
        int ctrl = (int)parse_int(cmd[0]);
        rt_fcntl(ctrl, RT_F_SETFD, RT_FD_CLOEXEC);
        cmd = park(ctrl, parent, sfd, flags);
    }

    /* The child shares our memory until it execs (vfork): it leaves its
     * outcome in these. */
    volatile int exec_errno = 0, exec_stage = NSBOX_STAGE_EXEC, exec_index = 0;
    long pid = -1;
    if (fail_stage == NSBOX_STAGE_EXEC || fail_stage == NSBOX_STAGE_RLIMIT) {
        exec_errno = fail_errno;
        exec_stage = fail_stage;
    } else {
        pid = rt_vfork();
        if (pid == 0) {
            rt_sigprocmask(RT_SIG_SETMASK, &none);
            long err = 0;
            int bad = apply_rlimits(rlimits, &err);
            if (bad >= 0) {
                exec_stage = NSBOX_STAGE_RLIMIT;
                exec_index = bad;
                exec_errno = (int)-err;
                rt_exit(NSBOX_EXIT_SETUP);
            }
            int e = exec_command(cmd);
            exec_errno = e ? e : RT_ENOEXEC;
            rt_exit(127);
        }
        if (pid < 0)
            fail(NSBOX_STAGE_INIT, pid);
    }
    if (exec_errno) {
        if (pid > 0)
            rt_wait((int)pid, NULL, 0);
        report(NSBOX_REPORT_ERROR, exec_stage, exec_errno, exec_index, 0);
        if (exec_stage == NSBOX_STAGE_RLIMIT)
            rt_exit(NSBOX_EXIT_SETUP);
        rt_exit(exec_errno == RT_ENOENT ? 127 : 126);
    }
    mark(NSBOX_PHASE_EXEC);
    report(NSBOX_REPORT_STARTED, 0, 0, 0, (int)pid);
    /* Not in the signalfd's set: a write to a report pipe its reader closed
     * fails with EPIPE instead of killing an init that is not a pid 1. */
    rt_sigset pipe_sig = rt_sigbit(RT_SIGPIPE);
    rt_sigprocmask(RT_SIG_BLOCK, &pipe_sig);
    /* init never reads or writes the command's stdio: don't hold pipes open. */
    rt_close(0);
    rt_close(1);
    rt_close(2);

    struct rt_pollfd fds[2] = {{.fd = sfd, .events = RT_POLLIN, .revents = 0},
                               {.fd = parent, .events = RT_POLLIN, .revents = 0}};
    unsigned nfds = parent >= 0 ? 2 : 1;
    for (;;) {
        long n = rt_ppoll(fds, nfds, 0);
        if (n == -RT_EINTR)
            continue;
        if (n < 0)
            break;
        if (nfds == 2 && fds[1].revents)
            caller_gone(flags, pid);
        if (!fds[0].revents)
            continue;
        struct rt_siginfo si;
        if (rt_read(sfd, &si, sizeof si) != (long)sizeof si)
            continue;
        if (si.signo != RT_SIGCHLD) {
            /* From the kernel: a terminal's ^C or quit key, resize or hangup, sent to its
             * whole foreground process group, which the command is in too (it
             * has ours): it has its own copy, a second would be one too many. */
            if (si.code != RT_SI_KERNEL)
                rt_kill((int)pid, (int)si.signo);
            continue;
        }
        for (;;) {
            int status = 0;
            long w = rt_wait(-1, &status, RT_WNOHANG);
            if (w <= 0)
                break;
            if (w == pid) {
                mark(NSBOX_PHASE_EXITED);
                /* The largest resident size of the processes reaped so far
                 * (the command, its descendants, orphans): our own counts the
                 * caller's memory, shared until our exec. */
                struct rt_rusage ru;
                long peak = rt_getrusage(RT_RUSAGE_CHILDREN, &ru) == 0 ? ru.maxrss : 0;
                if (peak > 0x7fffffffL)
                    peak = 0x7fffffffL;
                report(NSBOX_REPORT_EXITED, 0, 0, (int)peak, status);
                exit_like(status);
            }
        }
    }
    /* poll failed: kill the command rather than leave it unsupervised. */
    rt_kill((int)pid, RT_SIGKILL);
    rt_exit(128 + RT_SIGKILL);
}

#ifdef NSBOX_NOLIBC
void nsbox_init_start(long *sp);
void nsbox_init_start(long *sp)
{
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    environ_ = argv + argc + 1;
    init_main(argc, argv);
}
#else
int main(int argc, char **argv)
{
    environ_ = environ;
    init_main(argc, argv);
}
#endif
