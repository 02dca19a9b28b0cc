/*
 * initrt.h - the little runtime nsbox-init needs, without a libc where we can.
 *
 * A static glibc program spends ~0.3 ms of every start in libc's own set-up
 * (CPU feature probing, IRELATIVE relocations, TLS) on the VMs we measured:
 * a quarter of the whole sandbox's budget. On x86_64 and aarch64 nsbox-init
 * is therefore freestanding (NSBOX_NOLIBC): raw syscalls, its own _start.
 * Elsewhere the same functions map onto the libc.
 */
#ifndef NSBOX_INITRT_H
#define NSBOX_INITRT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stddef.h>
#include <stdint.h>

/* Linux ABI constants (identical on the architectures we build for). */
#define RT_EINTR 4
#define RT_ENOENT 2
#define RT_EACCES 13
#define RT_ENOTDIR 20
#define RT_ESTALE 116
#define RT_ENODEV 19
#define RT_ELOOP 40
#define RT_ENAMETOOLONG 36
#define RT_ENOEXEC 8
#define RT_F_SETFD 2
#define RT_F_DUPFD_CLOEXEC 1030
#define RT_FD_CLOEXEC 1
#define RT_O_CLOEXEC 02000000
#define RT_POLLIN 1
#define RT_PR_SET_PDEATHSIG 1
#define RT_PR_SET_DUMPABLE 4
#define RT_PR_SET_CHILD_SUBREAPER 36
#define RT_SIG_BLOCK 0
#define RT_SIG_SETMASK 2
#define RT_WNOHANG 1
#define RT_F_OK 0
#define RT_AT_FDCWD (-100)
#define RT_AT_REMOVEDIR 0x200
#define RT_SIGHUP 1
#define RT_SIGINT 2
#define RT_SIGQUIT 3
#define RT_SIGKILL 9
#define RT_SIGUSR1 10
#define RT_SIGUSR2 12
#define RT_SIGTERM 15
#define RT_SIGCHLD 17
#define RT_SIGPIPE 13
#define RT_SIGCONT 18
#define RT_SIGWINCH 28

typedef uint64_t rt_sigset; /* the kernel's sigset for signals 1..64 */

struct rt_pollfd {
    int fd;
    short events;
    short revents;
};

/* recvmsg(2) with SCM_RIGHTS: the kernel's struct user_msghdr and cmsghdr. */
struct rt_iovec {
    void *base;
    size_t len;
};
struct rt_msghdr {
    void *name;
    int namelen;
    struct rt_iovec *iov;
    size_t iovlen;
    void *control;
    size_t controllen;
    unsigned int flags;
};
struct rt_cmsghdr {
    size_t len;
    int level;
    int type;
};
#define RT_SOL_SOCKET 1
#define RT_SCM_RIGHTS 1
#define RT_MSG_CMSG_CLOEXEC 0x40000000

#define RT_CLOCK_MONOTONIC 1
/* struct rusage on 64-bit Linux: two timevals, then 14 longs, maxrss first. */
struct rt_rusage {
    long times[4];
    long maxrss; /* KiB */
    long rest[13];
};
#define RT_RUSAGE_CHILDREN (-1)

struct rt_timespec {
    int64_t sec;
    int64_t nsec;
};

/* struct rlimit64 of prlimit64(2); all ones is RLIM64_INFINITY. */
struct rt_rlimit {
    uint64_t cur;
    uint64_t max;
};

/* The part of struct signalfd_siginfo we read (the kernel writes 128 bytes). */
#define RT_SI_KERNEL 0x80 /* si_code of a signal the kernel sent, e.g. a terminal's */

struct rt_siginfo {
    uint32_t signo;
    int32_t err;
    int32_t code;
    uint32_t pid;
    uint8_t pad[112];
};

static inline rt_sigset rt_sigbit(int sig)
{
    return (rt_sigset)1 << (sig - 1);
}

#ifdef NSBOX_NOLIBC
#include <asm/unistd.h>

#include "rawsys.h"
#ifndef NSBOX_HAVE_RAWSYS
#error "NSBOX_NOLIBC supports x86_64 and aarch64 only"
#endif
#define rt_syscall6 nsbox_raw_syscall6

/* Raw syscalls return -errno; these keep that convention. */
#define RT_SYS(n, a, b, c, d, e, f) \
    rt_syscall6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

static inline long rt_write(int fd, const void *buf, size_t len)
{
    return RT_SYS(__NR_write, fd, buf, len, 0, 0, 0);
}
static inline long rt_pwrite(int fd, const void *buf, size_t len, long off)
{
    return RT_SYS(__NR_pwrite64, fd, buf, len, off, 0, 0);
}
static inline long rt_read(int fd, void *buf, size_t len)
{
    return RT_SYS(__NR_read, fd, buf, len, 0, 0, 0);
}
static inline long rt_close(int fd)
{
    return RT_SYS(__NR_close, fd, 0, 0, 0, 0, 0);
}
static inline long rt_fcntl(int fd, int cmd, long arg)
{
    return RT_SYS(__NR_fcntl, fd, cmd, arg, 0, 0, 0);
}
static inline long rt_prctl(int op, long arg)
{
    return RT_SYS(__NR_prctl, op, arg, 0, 0, 0, 0);
}
static inline long rt_ppoll(struct rt_pollfd *fds, unsigned n, int nonblock)
{
    static const long zero[2] = {0, 0};
    return RT_SYS(__NR_ppoll, fds, n, nonblock ? zero : NULL, NULL, 8, 0);
}
static inline long rt_sigprocmask(int how, const rt_sigset *set)
{
    return RT_SYS(__NR_rt_sigprocmask, how, set, NULL, sizeof(rt_sigset), 0, 0);
}
static inline long rt_signalfd(const rt_sigset *set)
{
    return RT_SYS(__NR_signalfd4, -1, set, sizeof(rt_sigset), RT_O_CLOEXEC, 0, 0);
}
static inline long rt_execve(const char *path, char *const argv[], char *const envp[])
{
    return RT_SYS(__NR_execve, path, argv, envp, 0, 0, 0);
}
static inline long rt_wait(int pid, int *status, int options)
{
    return RT_SYS(__NR_wait4, pid, status, options, NULL, 0, 0);
}
static inline long rt_kill(int pid, int sig)
{
    return RT_SYS(__NR_kill, pid, sig, 0, 0, 0, 0);
}
static inline long rt_exists(const char *path)
{
    return RT_SYS(__NR_faccessat, RT_AT_FDCWD, path, RT_F_OK, 0, 0, 0);
}
static inline long rt_setrlimit(int resource, const struct rt_rlimit *lim)
{
    return RT_SYS(__NR_prlimit64, 0, resource, lim, NULL, 0, 0);
}
static inline long rt_rmdirat(int dirfd, const char *name)
{
    return RT_SYS(__NR_unlinkat, dirfd, name, RT_AT_REMOVEDIR, 0, 0, 0);
}
static inline long rt_getrusage(int who, struct rt_rusage *ru)
{
    return RT_SYS(__NR_getrusage, who, ru, 0, 0, 0, 0);
}
static inline long rt_clock_gettime(int clock, struct rt_timespec *ts)
{
    return RT_SYS(__NR_clock_gettime, clock, ts, 0, 0, 0, 0);
}
static inline long rt_recvmsg(int fd, struct rt_msghdr *msg, int flags)
{
    return RT_SYS(__NR_recvmsg, fd, msg, flags, 0, 0, 0);
}
static inline long rt_dup3(int oldfd, int newfd, int flags)
{
    return RT_SYS(__NR_dup3, oldfd, newfd, flags, 0, 0, 0);
}
static inline long rt_chdir(const char *path)
{
    return RT_SYS(__NR_chdir, path, 0, 0, 0, 0, 0);
}
static inline __attribute__((noreturn)) void rt_exit(int code)
{
    for (;;)
        RT_SYS(__NR_exit_group, code, 0, 0, 0, 0, 0);
}

/*
 * vfork: the child borrows our stack until it execs or exits. The wrapper
 * keeps its return address out of the shared stack (x86_64) or in a register
 * (aarch64), so the child's calls cannot overwrite what the parent returns to.
 */
long rt_vfork(void) __attribute__((returns_twice));
#if defined(__x86_64__)
__asm__(".text\n"
        ".global rt_vfork\n"
        ".type rt_vfork,@function\n"
        "rt_vfork:\n"
        "  popq %rdx\n"
        "  movl $58, %eax\n" /* __NR_vfork */
        "  syscall\n"
        "  pushq %rdx\n"
        "  ret\n");
__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "  xorl %ebp, %ebp\n"
        "  movq %rsp, %rdi\n"
        "  andq $-16, %rsp\n"
        "  call nsbox_init_start\n"
        "  hlt\n");
#elif defined(__aarch64__)
__asm__(".text\n"
        ".global rt_vfork\n"
        ".type rt_vfork,%function\n"
        "rt_vfork:\n"
        "  mov x0, #0x4111\n" /* CLONE_VM | CLONE_VFORK | SIGCHLD */
        "  mov x1, #0\n"
        "  mov x2, #0\n"
        "  mov x3, #0\n"
        "  mov x4, #0\n"
        "  mov x8, #220\n" /* __NR_clone */
        "  svc #0\n"
        "  ret\n");
__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "  mov x29, #0\n"
        "  mov x30, #0\n"
        "  mov x0, sp\n"
        "  and sp, x0, #-16\n"
        "  bl nsbox_init_start\n"
        "  brk #0\n");
#endif

/* The compiler may turn loops into calls to these; freestanding, we supply them. */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}
void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

#else /* libc */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static inline long rt_ret(long r)
{
    return r < 0 ? -errno : r;
}
static inline long rt_write(int fd, const void *buf, size_t len)
{
    return rt_ret(write(fd, buf, len));
}
static inline long rt_pwrite(int fd, const void *buf, size_t len, long off)
{
    return rt_ret(pwrite(fd, buf, len, off));
}
static inline long rt_read(int fd, void *buf, size_t len)
{
    return rt_ret(read(fd, buf, len));
}
static inline long rt_close(int fd)
{
    return rt_ret(close(fd));
}
static inline long rt_fcntl(int fd, int cmd, long arg)
{
    return rt_ret(fcntl(fd, cmd, arg));
}
static inline long rt_prctl(int op, long arg)
{
    return rt_ret(prctl(op, arg, 0, 0, 0));
}
static inline long rt_ppoll(struct rt_pollfd *fds, unsigned n, int nonblock)
{
    return rt_ret(poll((struct pollfd *)(void *)fds, n, nonblock ? 0 : -1));
}
static inline long rt_sigprocmask(int how, const rt_sigset *set)
{
    return rt_ret(syscall(SYS_rt_sigprocmask, how, set, NULL, sizeof(rt_sigset)));
}
static inline long rt_signalfd(const rt_sigset *set)
{
    return rt_ret(syscall(SYS_signalfd4, -1, set, sizeof(rt_sigset), RT_O_CLOEXEC));
}
static inline long rt_execve(const char *path, char *const argv[], char *const envp[])
{
    return rt_ret(execve(path, argv, envp));
}
static inline long rt_wait(int pid, int *status, int options)
{
    return rt_ret(waitpid(pid, status, options));
}
static inline long rt_kill(int pid, int sig)
{
    return rt_ret(kill(pid, sig));
}
static inline long rt_exists(const char *path)
{
    return rt_ret(access(path, F_OK));
}
static inline long rt_setrlimit(int resource, const struct rt_rlimit *lim)
{
    return rt_ret((int)syscall(SYS_prlimit64, 0, resource, lim, NULL));
}
static inline long rt_rmdirat(int dirfd, const char *name)
{
    return rt_ret(unlinkat(dirfd, name, RT_AT_REMOVEDIR));
}
static inline long rt_getrusage(int who, struct rt_rusage *ru)
{
    return rt_ret(syscall(SYS_getrusage, who, ru));
}
static inline long rt_clock_gettime(int clock, struct rt_timespec *ts)
{
    return rt_ret((int)syscall(SYS_clock_gettime, clock, ts));
}
static inline long rt_recvmsg(int fd, struct rt_msghdr *msg, int flags)
{
    return rt_ret(syscall(SYS_recvmsg, fd, msg, flags));
}
static inline long rt_dup3(int oldfd, int newfd, int flags)
{
    return rt_ret(syscall(SYS_dup3, oldfd, newfd, flags));
}
static inline long rt_chdir(const char *path)
{
    return rt_ret(chdir(path));
}
static inline __attribute__((noreturn)) void rt_exit(int code)
{
    _exit(code);
}
/* A macro, not a function: vfork must be called from the frame that uses it. */
#define rt_vfork() rt_ret(vfork())
#endif

static inline size_t rt_strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static inline const char *rt_strchr(const char *s, char c)
{
    for (; *s; s++)
        if (*s == c)
            return s;
    return NULL;
}

static inline int rt_streq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

static inline void rt_copy(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i];
}

#endif
