/*
 * floor.c - the C floor for benchmarks/spawn_latency.py.
 *
 * The least a namespace sandbox can do to run a command: clone() a child
 * into new namespaces, let the child write its uid_map/gid_map (when it has
 * a new user namespace) and exec the command, then waitpid() for it.
 * No mounts, no init process, no report pipe, no Python.
 *
 * Every iteration is timed here, with CLOCK_MONOTONIC, from just before
 * clone() to just after waitpid() returns, and printed as one line of
 * nanoseconds, so the start-up of this binary is never counted.
 *
 * Usage:
 *   floor [--ns LIST] [--count N | --serve | --hold N] PROG [ARG...]
 *
 *   --ns LIST   namespaces, comma or '+' separated: user, mount (mnt), pid,
 *               uts, ipc, net, cgroup; or "all" (the default, all seven) or
 *               "none" (a plain fork+exec).
 *   --count N   run N iterations, print N lines, exit (batch mode).
 *   --serve     read a number k per line on stdin, run k iterations, print
 *               k lines and flush; exit at EOF. spawn_latency.py uses this
 *               to interleave single iterations with the other variants.
 *   --hold N    start N children running PROG and keep them; print
 *               "started N"; at a line on stdin, SIGKILL each (a pid
 *               namespace's init ignores SIGTERM from outside) and print
 *               "reaped N <ns from the first kill to the last reap>".
 *
 * A failed iteration prints "fail <wait status>" instead of a number.
 * Build: cc -O2 -o floor floor.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif

extern char **environ;

struct child_arg {
    char **argv;
    int new_user;
    char uid_map[64];
    char gid_map[64];
};

/* The child's stack: clone() without CLONE_VM gives the child a private
 * copy-on-write copy of our memory, so one static stack is enough. */
static char child_stack[256 * 1024] __attribute__((aligned(16)));

static int write_file(const char *path, const char *data)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = strlen(data);
    ssize_t n = write(fd, data, len);
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)len ? 0 : -1;
}

static int child_main(void *p)
{
    struct child_arg *a = p;
    if (a->new_user) {
        /* setgroups may be missing on very old kernels: ignore ENOENT. */
        if (write_file("/proc/self/setgroups", "deny") < 0 && errno != ENOENT) {
            perror("floor: setgroups");
            _exit(125);
        }
        if (write_file("/proc/self/uid_map", a->uid_map) < 0) {
            perror("floor: uid_map");
            _exit(125);
        }
        if (write_file("/proc/self/gid_map", a->gid_map) < 0) {
            perror("floor: gid_map");
            _exit(125);
        }
    }
    execve(a->argv[0], a->argv, environ);
    perror("floor: execve");
    _exit(127);
}

static int parse_ns(const char *spec, int *flags)
{
    if (strcmp(spec, "all") == 0) {
        *flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS |
                 CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP;
        return 0;
    }
    *flags = 0;
    if (strcmp(spec, "none") == 0 || spec[0] == '\0')
        return 0;
    char *copy = strdup(spec);
    if (!copy)
        return -1;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",+", &save); tok; tok = strtok_r(NULL, ",+", &save)) {
        if (strcmp(tok, "user") == 0)
            *flags |= CLONE_NEWUSER;
        else if (strcmp(tok, "mount") == 0 || strcmp(tok, "mnt") == 0)
            *flags |= CLONE_NEWNS;
        else if (strcmp(tok, "pid") == 0)
            *flags |= CLONE_NEWPID;
        else if (strcmp(tok, "uts") == 0)
            *flags |= CLONE_NEWUTS;
        else if (strcmp(tok, "ipc") == 0)
            *flags |= CLONE_NEWIPC;
        else if (strcmp(tok, "net") == 0)
            *flags |= CLONE_NEWNET;
        else if (strcmp(tok, "cgroup") == 0)
            *flags |= CLONE_NEWCGROUP;
        else {
            fprintf(stderr, "floor: unknown namespace '%s'\n", tok);
            free(copy);
            return -1;
        }
    }
    free(copy);
    return 0;
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* One iteration: print its duration in ns (or "fail <status>"). */
static void iteration(struct child_arg *a, int flags)
{
    long long t0 = now_ns();
    pid_t pid = clone(child_main, child_stack + sizeof(child_stack), flags | SIGCHLD, a);
    if (pid < 0) {
        printf("fail clone:%d\n", errno);
        return;
    }
    int status;
    pid_t r;
    do {
        r = waitpid(pid, &status, 0);
    } while (r < 0 && errno == EINTR);
    long long t1 = now_ns();
    if (r < 0)
        printf("fail waitpid:%d\n", errno);
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        printf("fail %d\n", status);
    else
        printf("%lld\n", t1 - t0);
}

static void usage(void)
{
    fprintf(stderr, "usage: floor [--ns LIST] [--count N | --serve | --hold N] PROG [ARG...]\n");
    exit(2);
}

/* --hold: N live children, then all killed and reaped at once (the teardown floor). */
static int hold(struct child_arg *a, int flags, long n)
{
    pid_t *pids = calloc((size_t)n, sizeof *pids);
    if (!pids)
        return 1;
    long started = 0;
    for (; started < n; started++) {
        pids[started] = clone(child_main, child_stack + sizeof(child_stack), flags | SIGCHLD, a);
        if (pids[started] < 0) {
            printf("fail clone:%d\n", errno);
            break;
        }
    }
    printf("started %ld\n", started);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof(line), stdin)) { /* EOF: still end them */
    }
    long long t0 = now_ns();
    for (long k = 0; k < started; k++)
        kill(pids[k], SIGKILL);
    long reaped = 0;
    while (reaped < started) {
        int status;
        pid_t r = waitpid(-1, &status, 0);
        if (r > 0)
            reaped++;
        else if (errno != EINTR)
            break;
    }
    printf("reaped %ld %lld\n", reaped, now_ns() - t0);
    fflush(stdout);
    free(pids);
    return 0;
}

int main(int argc, char **argv)
{
    const char *ns = "all";
    long count = 1;
    int serve = 0;
    long held = 0;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else if (strcmp(argv[i], "--ns") == 0 && i + 1 < argc) {
            ns = argv[++i];
        } else if (strcmp(argv[i], "--count") == 0 && i + 1 < argc) {
            count = strtol(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--serve") == 0) {
            serve = 1;
        } else if (strcmp(argv[i], "--hold") == 0 && i + 1 < argc) {
            held = strtol(argv[++i], NULL, 10);
        } else {
            usage();
        }
    }
    if (i >= argc)
        usage();

    int flags;
    if (parse_ns(ns, &flags) < 0)
        return 2;

    struct child_arg a = {.argv = argv + i, .new_user = (flags & CLONE_NEWUSER) != 0};
    snprintf(a.uid_map, sizeof(a.uid_map), "0 %u 1", (unsigned)geteuid());
    snprintf(a.gid_map, sizeof(a.gid_map), "0 %u 1", (unsigned)getegid());

    if (held > 0)
        return hold(&a, flags, held);
    if (!serve) {
        for (long k = 0; k < count; k++) {
            fflush(stdout); /* nothing buffered when we clone */
            iteration(&a, flags);
        }
        fflush(stdout);
        return 0;
    }

    char line[64];
    while (fgets(line, sizeof(line), stdin)) {
        long k = strtol(line, NULL, 10);
        for (long j = 0; j < k; j++) {
            fflush(stdout);
            iteration(&a, flags);
        }
        fflush(stdout);
    }
    return 0;
}
