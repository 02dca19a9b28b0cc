/*
 * sys.h - raw syscall wrappers and constants shared by spawn.c, child.c and
 * init.c. Raw syscalls keep us independent of the libc's version (glibc 2.36
 * cannot include <sys/mount.h> and <linux/mount.h> together) and make every
 * call async-signal-safe in the vfork child.
 */
#ifndef NSBOX_SYS_H
#define NSBOX_SYS_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NSBOX_HIDDEN __attribute__((visibility("hidden")))

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef MS_REC
#define MS_REC 16384
#endif
#ifndef MS_PRIVATE
#define MS_PRIVATE (1 << 18)
#endif
#ifndef MNT_DETACH
#define MNT_DETACH 2
#endif

#define NSBOX_OPEN_TREE_CLONE 1
#define NSBOX_OPEN_TREE_CLOEXEC O_CLOEXEC
#define NSBOX_MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#define NSBOX_MOVE_MOUNT_T_EMPTY_PATH 0x00000040
#define NSBOX_FSOPEN_CLOEXEC 0x00000001
#define NSBOX_FSMOUNT_CLOEXEC 0x00000001
#define NSBOX_FSCONFIG_SET_FLAG 0
#define NSBOX_FSCONFIG_SET_STRING 1
#define NSBOX_FSCONFIG_CMD_CREATE 6
#define NSBOX_MOUNT_ATTR_RDONLY 0x00000001
#define NSBOX_MOUNT_ATTR_NOSUID 0x00000002
#define NSBOX_MOUNT_ATTR_NODEV 0x00000004
#define NSBOX_MOUNT_ATTR_NOEXEC 0x00000008
#define NSBOX_RESOLVE_NO_MAGICLINKS 0x02
#define NSBOX_RESOLVE_IN_ROOT 0x10

struct nsbox_mount_attr {
    uint64_t attr_set;
    uint64_t attr_clr;
    uint64_t propagation;
    uint64_t userns_fd;
};

struct nsbox_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};

static inline int sys_open_tree(int dfd, const char *path, unsigned int flags)
{
    return (int)syscall(SYS_open_tree, dfd, path, flags);
}

static inline int sys_move_mount(int from_dfd, const char *from, int to_dfd, const char *to,
                                 unsigned int flags)
{
    return (int)syscall(SYS_move_mount, from_dfd, from, to_dfd, to, flags);
}

static inline int sys_mount_setattr(int dfd, const char *path, unsigned int flags,
                                    struct nsbox_mount_attr *attr)
{
    return (int)syscall(SYS_mount_setattr, dfd, path, flags, attr, sizeof(*attr));
}

static inline int sys_fsopen(const char *fsname, unsigned int flags)
{
    return (int)syscall(SYS_fsopen, fsname, flags);
}

static inline int sys_fsconfig(int fd, unsigned int cmd, const char *key, const void *value, int aux)
{
    return (int)syscall(SYS_fsconfig, fd, cmd, key, value, aux);
}

static inline int sys_fsmount(int fd, unsigned int flags, unsigned int attr)
{
    return (int)syscall(SYS_fsmount, fd, flags, attr);
}

static inline int sys_openat2(int dfd, const char *path, struct nsbox_open_how *how)
{
    return (int)syscall(SYS_openat2, dfd, path, how, sizeof(*how));
}

static inline int sys_pivot_root(const char *new_root, const char *put_old)
{
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}

static inline int sys_mount(const char *src, const char *dst, const char *type, unsigned long flags,
                            const void *data)
{
    return (int)syscall(SYS_mount, src, dst, type, flags, data);
}

static inline int sys_umount2(const char *target, int flags)
{
    return (int)syscall(SYS_umount2, target, flags);
}

static inline int sys_close_range(unsigned int first, unsigned int last, unsigned int flags)
{
    return (int)syscall(SYS_close_range, first, last, flags);
}

static inline int sys_execveat(int dfd, const char *path, char *const argv[], char *const envp[],
                               int flags)
{
    return (int)syscall(SYS_execveat, dfd, path, argv, envp, flags);
}

/* Record phase `phase` now, if the caller asked for timestamps. The raw
 * syscall, not the vDSO: the child must not depend on libc state. */
static inline void mark_phase(uint64_t *timings, int phase)
{
    if (!timings)
        return;
    struct timespec ts;
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
    timings[phase] = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* write(2) the whole buffer, retrying on EINTR; records are small, one write suffices. */
static inline int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

#endif
