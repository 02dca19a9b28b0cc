/*
 * init.c - nsbox-init, pid 1 of every sandbox (a static executable).
 *
 *   nsbox-init REPORT_FD PARENT_PIDFD FLAGS FAIL_STAGE FAIL_ERRNO -- CMD [ARGS...]
 *
 * Starts the command with vfork+execvpe (PATH searched inside the sandbox),
 * reports STARTED or the exec error on the report pipe, forwards the usual
 * termination and job signals to it, reaps every orphan, and when the command
 * ends reports its wait status as an EXITED record and exits. A pid 1 cannot
 * die of its own signals, so the record is how a signal death reaches the
 * caller intact. If the caller's process dies, the sandbox dies with it.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "nsbox.h"
#include "sys.h"

#define INIT_PID1 1 /* we are pid 1 of a new pid namespace */



static const int forwarded[] = {SIGTERM, SIGINT,  SIGHUP,   SIGQUIT,
                                SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT};

static int report_fd = -1;

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
    if (strchr(file, '/')) {
        execve(file, cmd, environ);
        return errno;
    }
    const char *path = getenv("PATH");
    if (!path)
        path = "/bin:/usr/bin";
    size_t flen = strlen(file);
    int result = ENOENT;
    char buf[4096];
    for (const char *p = path;; p++) {
        const char *end = strchr(p, ':');
        size_t dlen = end ? (size_t)(end - p) : strlen(p);
        if (dlen == 0) {
            buf[0] = '.';
            dlen = 1;
        } else if (dlen + flen + 2 <= sizeof buf) {
            memcpy(buf, p, dlen);
        } else {
            dlen = 0;
        }
        if (dlen && dlen + flen + 2 <= sizeof buf) {
            buf[dlen] = '/';
            memcpy(buf + dlen + 1, file, flen + 1);
            execve(buf, cmd, environ);
            int err = errno;
            struct stat st;
            if (err == EACCES) {
                if (stat(buf, &st) == 0)
                    result = EACCES; /* there, but not executable: keep looking */
            } else if (err != ENOENT && err != ENOTDIR && err != ESTALE && err != ENODEV &&
                       err != ELOOP && err != ENAMETOOLONG) {
                return err; /* found, and it failed for a reason of its own */
            }
        }
        if (!end)
            break;
        p = end;
    }
    return result;
}

static void report(int kind, int stage, int err, int value)
{
    struct nsbox_report r;
    r.magic = NSBOX_REPORT_MAGIC;
    r.kind = kind;
    r.stage = stage;
    r.err = err;
    r.index = 0;
    r.value = value;
    (void)write_all(report_fd, &r, sizeof r);
}

static __attribute__((noreturn)) void fail(int stage, int err)
{
    report(NSBOX_REPORT_ERROR, stage, err, 0);
    _exit(NSBOX_EXIT_SETUP);
}

/* Exit as init: the code a shell would show for the command's status. */
static __attribute__((noreturn)) void exit_like(int status)
{
    if (WIFSIGNALED(status))
        _exit(128 + WTERMSIG(status));
    _exit(WEXITSTATUS(status));
}

int main(int argc, char **argv)
{
    if (argc < 8 || strcmp(argv[6], "--") != 0)
        return NSBOX_EXIT_SETUP;
    report_fd = (int)parse_int(argv[1]);
    int parent = (int)parse_int(argv[2]);
    long flags = parse_int(argv[3]);
    int fail_stage = (int)parse_int(argv[4]);
    int fail_errno = (int)parse_int(argv[5]);
    char **cmd = argv + 7;

    /* All signals arrive blocked from the setup child: nothing is lost
     * between exec and the signalfd. */
    sigset_t set, none;
    sigemptyset(&set);
    sigemptyset(&none);
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaddset(&set, forwarded[i]);
    sigaddset(&set, SIGCHLD);
    if (fail_stage == NSBOX_STAGE_INIT)
        fail(NSBOX_STAGE_INIT, fail_errno);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        fail(NSBOX_STAGE_INIT, errno);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    if (sfd < 0)
        fail(NSBOX_STAGE_INIT, errno);
    if (fcntl(report_fd, F_SETFD, FD_CLOEXEC) < 0)
        fail(NSBOX_STAGE_INIT, errno);
    if (parent >= 0) {
        if (fcntl(parent, F_SETFD, FD_CLOEXEC) < 0)
            fail(NSBOX_STAGE_INIT, errno);
        /* The pidfd watches the caller's whole process from now on; the
         * death signal would fire when the calling *thread* ends. */
        prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0);
        struct pollfd p = {.fd = parent, .events = POLLIN};
        if (poll(&p, 1, 0) > 0)
            _exit(128 + SIGKILL);
    }
    if (!(flags & INIT_PID1))
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

    volatile int exec_errno = 0;
    pid_t pid;
    if (fail_stage == NSBOX_STAGE_EXEC) {
        exec_errno = fail_errno;
        pid = -1;
    } else {
        pid = vfork();
        if (pid == 0) {
            sigprocmask(SIG_SETMASK, &none, NULL);
            int err = exec_command(cmd);
            exec_errno = err ? err : ENOEXEC;
            _exit(127);
        }
        if (pid < 0)
            fail(NSBOX_STAGE_INIT, errno);
    }
    if (exec_errno) {
        if (pid > 0)
            waitpid(pid, NULL, 0);
        report(NSBOX_REPORT_ERROR, NSBOX_STAGE_EXEC, exec_errno, 0);
        _exit(exec_errno == ENOENT ? 127 : 126);
    }
    report(NSBOX_REPORT_STARTED, 0, 0, pid);
    /* init never reads or writes the command's stdio: don't hold pipes open. */
    close(0);
    close(1);
    close(2);

    struct pollfd fds[2] = {{.fd = sfd, .events = POLLIN}, {.fd = parent, .events = POLLIN}};
    nfds_t nfds = parent >= 0 ? 2 : 1;
    for (;;) {
        if (poll(fds, nfds, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (nfds == 2 && fds[1].revents) {
            /* The caller is gone. As pid 1, our exit kills the namespace. */
            if (!(flags & INIT_PID1))
                kill(pid, SIGKILL);
            _exit(128 + SIGKILL);
        }
        if (!fds[0].revents)
            continue;
        struct signalfd_siginfo si;
        ssize_t n = read(sfd, &si, sizeof si);
        if (n != (ssize_t)sizeof si)
            continue;
        if ((int)si.ssi_signo != SIGCHLD) {
            kill(pid, (int)si.ssi_signo);
            continue;
        }
        for (;;) {
            int status;
            pid_t w = waitpid(-1, &status, WNOHANG);
            if (w <= 0)
                break;
            if (w == pid) {
                report(NSBOX_REPORT_EXITED, 0, 0, status);
                exit_like(status);
            }
        }
    }
    /* poll failed: kill the command rather than leave it unsupervised. */
    kill(pid, SIGKILL);
    return 128 + SIGKILL;
}
