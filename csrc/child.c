/*
 * child.c - the sandbox's setup child, from clone to the execveat of nsbox-init.
 *
 * Runs on its own stack in the caller's address space (CLONE_VM|CLONE_VFORK):
 * no malloc, no stdio, no locks, nothing but syscalls and the memory the
 * parent prepared. Every step is a small static function called from
 * nsbox_child_main in one linear order. A failing step writes one
 * nsbox_report record to the report pipe and _exits; the parent decodes it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/ioctl.h>
#include <sys/poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "nsbox.h"
#include "sys.h"
#include "child.h"

#define PATH_BUF 4096

static __attribute__((noreturn)) void fail(const struct nsbox_spec *s, int stage, int err, int index)
{
    struct nsbox_report r;
    r.magic = NSBOX_REPORT_MAGIC;
    r.kind = NSBOX_REPORT_ERROR;
    r.stage = stage;
    r.err = err ? err : EIO;
    r.index = index;
    r.value = 0;
    (void)write_all(s->report_fd, &r, sizeof r);
    _exit(NSBOX_EXIT_SETUP);
}

/* Failure injection for tests: make `stage` fail as if with debug_fail_errno. */
static void inject(const struct nsbox_spec *s, int stage, int index)
{
    if (s->debug_fail_stage == stage)
        fail(s, stage, s->debug_fail_errno, index);
}

#define TRY(s, stage, index, expr)                 \
    do {                                           \
        if ((expr) < 0)                            \
            fail((s), (stage), errno, (index));    \
    } while (0)

static int write_file(const char *path, const char *data)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = write_all(fd, data, strlen(data));
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

/* SIGPIPE and SIGXFSZ back to default, as subprocess's restore_signals does:
 * Python ignores them, and an ignored signal would survive execve. */
static void restore_signals(void)
{
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
}

/* First: from here on, the caller's death kills us; the pidfd check closes the
 * window in which the caller died before the prctl. */
static void die_with_parent(const struct nsbox_spec *s)
{
    inject(s, NSBOX_STAGE_PARENT_DEATH, 0);
    TRY(s, NSBOX_STAGE_PARENT_DEATH, 0, prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0));
    if (s->parent_pidfd >= 0) {
        struct pollfd p = {.fd = s->parent_pidfd, .events = POLLIN};
        if (poll(&p, 1, 0) > 0)
            _exit(NSBOX_EXIT_SETUP);
    }
}

/*
 * Before any setup work, so that what setup allocates is charged to the
 * sandbox and the command never runs outside its cgroup. cgroup v2 cloned us
 * straight into it (CLONE_INTO_CGROUP); cgroup v1 has no such flag, so the
 * child moves itself by writing "0" to each hierarchy's `tasks` file, opened
 * by the parent (v1 checks the opener's credentials, not ours). `tasks` moves
 * just this thread, which is the whole process (no CLONE_THREAD), without the
 * kernel's global threadgroup lock that cgroup.procs would take. The cgroup
 * namespace is made only now, so that the sandbox's cgroup is its root.
 */
static void join_cgroup(const struct nsbox_spec *s)
{
    if (s->cgroup_dirfd < 0 && s->n_cgroup_procs == 0)
        return;
    inject(s, NSBOX_STAGE_CGROUP, 0);
    for (uint32_t i = 0; i < s->n_cgroup_procs; i++)
        TRY(s, NSBOX_STAGE_CGROUP, (int)i, write_all(s->cgroup_procs[i], "0", 1));
    if (s->namespaces & NSBOX_NS_CGROUP)
        TRY(s, NSBOX_STAGE_CGROUP, -1, unshare(CLONE_NEWCGROUP));
}

/* Before anything that needs privilege: map the caller to the identity inside. */
static void write_id_maps(const struct nsbox_spec *s)
{
    if (!(s->namespaces & NSBOX_NS_USER))
        return;
    inject(s, NSBOX_STAGE_SETGROUPS, 0);
    TRY(s, NSBOX_STAGE_SETGROUPS, 0, write_file("/proc/self/setgroups", "deny"));
    inject(s, NSBOX_STAGE_UID_MAP, 0);
    TRY(s, NSBOX_STAGE_UID_MAP, 0, write_file("/proc/self/uid_map", s->uid_map));
    inject(s, NSBOX_STAGE_GID_MAP, 0);
    TRY(s, NSBOX_STAGE_GID_MAP, 0, write_file("/proc/self/gid_map", s->gid_map));
}

static int open_in_root(int rootfd, const char *rel, int flags)
{
    struct nsbox_open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)(flags | O_CLOEXEC);
    how.resolve = NSBOX_RESOLVE_IN_ROOT | NSBOX_RESOLVE_NO_MAGICLINKS;
    return sys_openat2(rootfd, rel, &how);
}

/* A fresh, detached filesystem of type `fstype`, mounted with `attr`. */
static int new_fs(const char *fstype, const char *size, const char *mode, unsigned attr)
{
    int fs = sys_fsopen(fstype, NSBOX_FSOPEN_CLOEXEC);
    if (fs < 0)
        return -1;
    int m = -1;
    if (size && sys_fsconfig(fs, NSBOX_FSCONFIG_SET_STRING, "size", size, 0) < 0)
        goto out;
    if (mode && sys_fsconfig(fs, NSBOX_FSCONFIG_SET_STRING, "mode", mode, 0) < 0)
        goto out;
    if (sys_fsconfig(fs, NSBOX_FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
        goto out;
    m = sys_fsmount(fs, NSBOX_FSMOUNT_CLOEXEC, attr);
out:;
    int saved = errno;
    close(fs);
    errno = saved;
    return m;
}

static int set_readonly(int mfd, int recursive)
{
    struct nsbox_mount_attr a;
    memset(&a, 0, sizeof a);
    a.attr_set = NSBOX_MOUNT_ATTR_RDONLY;
    return sys_mount_setattr(mfd, "", AT_EMPTY_PATH | (recursive ? AT_RECURSIVE : 0), &a);
}

static int attach(int mfd, int target_fd, const char *target)
{
    return sys_move_mount(mfd, "", target_fd, target,
                          NSBOX_MOVE_MOUNT_F_EMPTY_PATH |
                              (target[0] ? 0 : NSBOX_MOVE_MOUNT_T_EMPTY_PATH));
}

/* Bind a clone of `dirfd/name` (host view) onto `dst_dfd/name`. */
static int bind_entry(int dirfd, const char *name, int dst_dfd)
{
    int t = sys_open_tree(dirfd, name,
                          NSBOX_OPEN_TREE_CLONE | NSBOX_OPEN_TREE_CLOEXEC | AT_RECURSIVE |
                              AT_SYMLINK_NOFOLLOW);
    if (t < 0)
        return -1;
    int rc = attach(t, dst_dfd, name);
    int saved = errno;
    close(t);
    errno = saved;
    return rc;
}

/*
 * Cover directory `anc` (an fd that stays open on the original) with a tmpfs
 * that mirrors it: every entry is bound (directories and files) or copied
 * (symlinks) from the original, so the view is unchanged but new entries can
 * be made in the sandbox only. Returns the tmpfs mount fd.
 */
static int mirror_dir(int anc_path_fd)
{
    int src = openat(anc_path_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (src < 0)
        return -1;
    struct stat st;
    int m = -1;
    if (fstat(src, &st) < 0)
        goto out;
    /* The mirror keeps the original's permission bits (as octal text for fsconfig). */
    char mode[8];
    unsigned bits = st.st_mode & 07777;
    for (int i = 3; i >= 0; i--) {
        mode[i] = (char)('0' + (bits & 7));
        bits >>= 3;
    }
    mode[4] = 0;
    m = new_fs("tmpfs", "1048576", mode, NSBOX_MOUNT_ATTR_NOSUID | NSBOX_MOUNT_ATTR_NODEV);
    if (m < 0)
        goto out;
    if (attach(m, anc_path_fd, "") < 0)
        goto bad;
    char buf[4096] __attribute__((aligned(8)));
    char link[PATH_BUF];
    for (;;) {
        long n = syscall(SYS_getdents64, src, buf, sizeof buf);
        if (n < 0)
            goto bad;
        if (n == 0)
            break;
        for (long off = 0; off < n;) {
            struct dirent64 *d = (struct dirent64 *)(buf + off);
            off += d->d_reclen;
            const char *name = d->d_name;
            if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
                continue;
            unsigned char type = d->d_type;
            if (type == DT_UNKNOWN) {
                struct stat es;
                if (fstatat(src, name, &es, AT_SYMLINK_NOFOLLOW) < 0)
                    goto bad;
                type = S_ISDIR(es.st_mode) ? DT_DIR : S_ISLNK(es.st_mode) ? DT_LNK : DT_REG;
            }
            if (type == DT_LNK) {
                ssize_t len = readlinkat(src, name, link, sizeof link - 1);
                if (len < 0)
                    goto bad;
                link[len] = 0;
                if (symlinkat(link, m, name) < 0)
                    goto bad;
                continue;
            }
            if (type == DT_DIR) {
                if (mkdirat(m, name, 0755) < 0)
                    goto bad;
            } else {
                int f = openat(m, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
                if (f < 0)
                    goto bad;
                close(f);
            }
            if (bind_entry(src, name, m) < 0)
                goto bad;
        }
    }
    close(src);
    return m;
bad:;
    int saved = errno;
    close(m);
    errno = saved;
    m = -1;
out:
    saved = errno;
    close(src);
    errno = saved;
    return m;
}

/*
 * Open the mount target `rel` inside the new root, creating what is missing in
 * the sandbox's view only: directly when it lies in a tmpfs of ours, else in
 * a mirror tmpfs over its deepest existing ancestor. Never writes to the host.
 * When the ancestor is the root itself, the mirror becomes the new root (and
 * *rerooted counts such mirrors).
 */
static int open_target(int *rootp, int *rerooted, const char *rel, int want_dir,
                       int in_scratch)
{
    int rootfd = *rootp;
    int fd = open_in_root(rootfd, rel, O_PATH);
    if (fd >= 0 || errno != ENOENT)
        return fd;

    char path[PATH_BUF];
    size_t len = strlen(rel);
    if (len >= sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(path, rel, len + 1);
    /* Find the deepest ancestor that exists. */
    size_t cut = len;
    int anc;
    for (;;) {
        while (cut > 0 && path[cut] != '/')
            cut--;
        if (cut == 0) {
            anc = open_in_root(rootfd, ".", O_PATH | O_DIRECTORY);
            break;
        }
        path[cut] = 0;
        anc = open_in_root(rootfd, path, O_PATH | O_DIRECTORY);
        path[cut] = '/';
        if (anc >= 0 || errno != ENOENT)
            break;
        cut--;
    }
    if (anc < 0)
        return -1;
    int dir = anc;
    int mirror = -1;
    if (!in_scratch) {
        mirror = mirror_dir(anc);
        close(anc);
        if (mirror < 0)
            return -1;
        dir = fcntl(mirror, F_DUPFD_CLOEXEC, 3);
        if (dir < 0) {
            close(mirror);
            return -1;
        }
        if (cut == 0) {
            /* pivot_root and later targets must see the mirror, not the
             * tree it covers. */
            close(*rootp);
            (*rerooted)++;
            *rootp = fcntl(mirror, F_DUPFD_CLOEXEC, 3);
            if (*rootp < 0) {
                close(dir);
                close(mirror);
                return -1;
            }
        }
    }
    /* Create the missing components below `dir`. */
    const char *p = path + (path[cut] == '/' ? cut + 1 : cut);
    int result = -1;
    for (;;) {
        const char *slash = strchr(p, '/');
        char comp[256];
        size_t clen = slash ? (size_t)(slash - p) : strlen(p);
        if (clen == 0 || clen >= sizeof comp) {
            errno = clen ? ENAMETOOLONG : EINVAL;
            break;
        }
        memcpy(comp, p, clen);
        comp[clen] = 0;
        int last = slash == NULL;
        if (last && !want_dir) {
            /* Never through a symlink: an absolute one would resolve in the
             * host's root, which is still our root here. */
            int f = openat(dir, comp, O_CREAT | O_EXCL | O_NOFOLLOW | O_WRONLY | O_CLOEXEC, 0644);
            if (f < 0)
                break;
            close(f);
        } else if (mkdirat(dir, comp, 0755) < 0 && errno != EEXIST) {
            break;
        }
        int next = openat(dir, comp, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (next < 0)
            break;
        close(dir);
        dir = next;
        if (last) {
            result = dir;
            dir = -1;
            break;
        }
        p = slash + 1;
    }
    int saved = errno;
    if (dir >= 0)
        close(dir);
    /* Made what was missing: the mirror is now read-only, whatever the
     * original. Its entries are the original's, bound, and stay as writable as
     * they were; a new entry beside them could only go to the mirror's tmpfs
     * and be lost with the sandbox: EROFS says so instead. */
    if (mirror >= 0) {
        if (result >= 0 && set_readonly(mirror, 0) < 0) {
            saved = errno;
            close(result);
            result = -1;
        }
        close(mirror);
    }
    errno = saved;
    return result;
}

/* The minimal /dev: a tmpfs with bound device nodes (from `hostdev`, the
 * host's /dev opened before anything was mounted), devpts, shm and links. */
static int make_dev(int dev, int hostdev)
{
    static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
    static const char *const links[][2] = {
        {"fd", "/proc/self/fd"},        {"stdin", "/proc/self/fd/0"},
        {"stdout", "/proc/self/fd/1"},  {"stderr", "/proc/self/fd/2"},
        {"ptmx", "pts/ptmx"},
    };
    if (hostdev < 0) {
        errno = ENOENT; /* the host has no /dev to take the nodes from */
        return -1;
    }
    for (size_t i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
        int t = sys_open_tree(hostdev, nodes[i], NSBOX_OPEN_TREE_CLOEXEC | NSBOX_OPEN_TREE_CLONE);
        if (t < 0)
            return -1;
        int f = openat(dev, nodes[i], O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0666);
        if (f < 0 || attach(t, dev, nodes[i]) < 0) {
            int saved = errno;
            if (f >= 0)
                close(f);
            close(t);
            errno = saved;
            return -1;
        }
        close(f);
        close(t);
    }
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (symlinkat(links[i][1], dev, links[i][0]) < 0)
            return -1;
    /* /dev/shm is a directory of /dev's tmpfs: no superblock of its own. */
    if (mkdirat(dev, "pts", 0755) < 0 || mkdirat(dev, "shm", 0) < 0 ||
        fchmodat(dev, "shm", 01777, 0) < 0)
        return -1;
    int pts = sys_fsopen("devpts", NSBOX_FSOPEN_CLOEXEC);
    if (pts < 0)
        return -1;
    int rc = -1;
    if (sys_fsconfig(pts, NSBOX_FSCONFIG_SET_STRING, "ptmxmode", "0666", 0) == 0 &&
        sys_fsconfig(pts, NSBOX_FSCONFIG_SET_STRING, "mode", "0620", 0) == 0 &&
        sys_fsconfig(pts, NSBOX_FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0) {
        int m = sys_fsmount(pts, NSBOX_FSMOUNT_CLOEXEC,
                            NSBOX_MOUNT_ATTR_NOSUID | NSBOX_MOUNT_ATTR_NOEXEC);
        if (m >= 0) {
            rc = attach(m, dev, "pts");
            close(m);
        }
    }
    close(pts);
    return rc;
}

/* A bind mount's source, cloned from the host's view (absolute paths resolve
 * in the host's tree: the old root, or the root before anything is mounted
 * on it), read-only if asked. */
static int open_bind_source(const struct nsbox_mount *op)
{
    int src = sys_open_tree(AT_FDCWD, op->src,
                            NSBOX_OPEN_TREE_CLONE | NSBOX_OPEN_TREE_CLOEXEC | AT_RECURSIVE);
    if (src < 0)
        return -1;
    if ((op->flags & NSBOX_MF_READONLY) && set_readonly(src, 1) < 0) {
        int saved = errno;
        close(src);
        errno = saved;
        return -1;
    }
    return src;
}

/* One mount op of the plan, attached inside the new root. `src`: a bind's
 * source from open_bind_source (taken over), or -1 to open it here. */
static int do_mount(int *rootfd, int *rerooted, const struct nsbox_mount *op, int src,
                    int hostdev)
{
    int target = -1, rc = -1;
    int want_dir = 1;
    int in_scratch = (op->flags & NSBOX_MF_IN_SCRATCH) != 0;
    switch ((enum nsbox_mount_kind)op->kind) {
    case NSBOX_MNT_BIND: {
        if (src < 0)
            src = open_bind_source(op);
        if (src < 0)
            return -1;
        struct stat st;
        if (fstat(src, &st) < 0)
            goto out;
        want_dir = S_ISDIR(st.st_mode);
        break;
    }
    case NSBOX_MNT_TMPFS:
        src = new_fs("tmpfs", op->size, op->mode, NSBOX_MOUNT_ATTR_NOSUID | NSBOX_MOUNT_ATTR_NODEV);
        break;
    case NSBOX_MNT_PROC:
        src = new_fs("proc", NULL, NULL,
                     NSBOX_MOUNT_ATTR_NOSUID | NSBOX_MOUNT_ATTR_NODEV | NSBOX_MOUNT_ATTR_NOEXEC);
        break;
    case NSBOX_MNT_DEV:
        /* nodev too: the device nodes are binds, which keep their own flags.
         * Exec stays allowed, for programs that map /dev/shm executable. */
        src = new_fs("tmpfs", NULL, "0755", NSBOX_MOUNT_ATTR_NOSUID | NSBOX_MOUNT_ATTR_NODEV);
        break;
    default:
        errno = EINVAL;
        return -1;
    }
    if (src < 0)
        return -1;
    target = open_target(rootfd, rerooted, op->dst, want_dir, in_scratch);
    if (target < 0 || attach(src, target, "") < 0)
        goto out;
    if (op->kind == NSBOX_MNT_DEV && make_dev(src, hostdev) < 0)
        goto out;
    rc = 0;
out:;
    int saved = errno;
    if (target >= 0)
        close(target);
    close(src);
    errno = saved;
    return rc;
}

/* At most this many bind sources are opened ahead of an in-place root (more:
 * the root is a clone, as for rootfs=). */
#define PREOPEN_MAX 64

/*
 * The filesystem. With the host's / as the root (the default) and a user
 * namespace, in place: the new mount namespace's own copy of the host's tree
 * is made private and read-only in one pass, and the plan's mounts go on it.
 * Otherwise (rootfs=, no user namespace, many binds): a clone of the root's
 * tree, stacked on /, the mounts attached inside it while host paths still
 * resolve, then pivot_root into it and the old root detached.
 *
 * In place there is no old root to detach: its umount waits for an RCU grace
 * period (slow while the machine tears namespaces down by the thousand), and
 * pivot_root walks every thread on the machine (4.5 ms with 3,000 sandboxes
 * live). What the mounts cover (the host's /dev, /proc, /tmp) stays under
 * them, out of reach: the command cannot unmount (no CAP_SYS_ADMIN in its
 * bounding set, see drop_caps) and holds no fd from before. Bind sources are
 * opened first, while every absolute path still resolves in the host's view;
 * a mount target whose missing parts would be made in a mirror of / itself
 * makes that mirror the root, and then it is pivot_root as with a clone.
 */
static void build_filesystem(const struct nsbox_spec *s)
{
    if (!(s->namespaces & NSBOX_NS_MOUNT) || s->root == NULL)
        return;
    /* Without a user namespace the copied mounts are still shared with the
     * host's (and pivot_root refuses shared mounts): make them private. In a
     * user namespace they are already slaves; the pass below makes the tree
     * in use private. */
    inject(s, NSBOX_STAGE_MOUNT_PRIVATE, 0);
    if (!(s->namespaces & NSBOX_NS_USER))
        TRY(s, NSBOX_STAGE_MOUNT_PRIVATE, 0,
            sys_mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));

    /* In place only in a user namespace: the kernel refuses one to a caller
     * whose root is not its mount namespace's (a chroot), so the tree in
     * place is all there is; a chrooted root caller without one gets a clone,
     * whose root is its chroot, or CAP_SYS_CHROOT would climb out of it. */
    int in_place = (s->namespaces & NSBOX_NS_USER) && s->root[0] == '/' && s->root[1] == 0 &&
                   s->n_mounts <= PREOPEN_MAX;
    int pre[PREOPEN_MAX];
    uint32_t n_pre = in_place ? s->n_mounts : 0;
    for (uint32_t i = 0; i < n_pre; i++) {
        pre[i] = -1;
        if (s->mounts[i].kind == NSBOX_MNT_BIND)
            TRY(s, NSBOX_STAGE_MOUNT, (int)i, pre[i] = open_bind_source(&s->mounts[i]));
    }
    int hostdev = open("/dev", O_PATH | O_DIRECTORY | O_CLOEXEC);

    inject(s, NSBOX_STAGE_ROOT, 0);
    /* One pass over the tree: private, and read-only unless asked not to be. */
    struct nsbox_mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.propagation = MS_PRIVATE;
    if (s->root_flags & NSBOX_MF_READONLY)
        attr.attr_set = NSBOX_MOUNT_ATTR_RDONLY;
    int root;
    if (in_place) {
        TRY(s, NSBOX_STAGE_ROOT, 0,
            sys_mount_setattr(AT_FDCWD, "/", AT_RECURSIVE, &attr));
        root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
        TRY(s, NSBOX_STAGE_ROOT, 0, root);
    } else {
        root = sys_open_tree(AT_FDCWD, s->root,
                             NSBOX_OPEN_TREE_CLONE | NSBOX_OPEN_TREE_CLOEXEC | AT_RECURSIVE);
        TRY(s, NSBOX_STAGE_ROOT, 0, root);
        TRY(s, NSBOX_STAGE_ROOT, 0,
            sys_mount_setattr(root, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr));
        /* Stacked on /: absolute paths keep resolving in the old root (the
         * process root) until pivot_root, which is what bind sources need. */
        TRY(s, NSBOX_STAGE_ROOT, 0, attach(root, AT_FDCWD, "/"));
    }
    int rerooted = 0;

    /* Every mount is attached before its fd is closed: closing a detached
     * mount tree costs an RCU grace period. */
    for (uint32_t i = 0; i < s->n_mounts; i++) {
        inject(s, NSBOX_STAGE_MOUNT, (int)i);
        int src = i < n_pre ? pre[i] : -1; /* do_mount takes it over */
        TRY(s, NSBOX_STAGE_MOUNT, (int)i,
            do_mount(&root, &rerooted, &s->mounts[i], src, hostdev));
    }
    if (hostdev >= 0)
        close(hostdev);

    inject(s, NSBOX_STAGE_PIVOT_ROOT, 0);
    if (!in_place || rerooted) {
        TRY(s, NSBOX_STAGE_PIVOT_ROOT, 0, fchdir(root));
        TRY(s, NSBOX_STAGE_PIVOT_ROOT, 0, sys_pivot_root(".", "."));
        /* The old root is now stacked on the new one, with what lay between
         * them before on top of it: with mirrors at / (the last is the new
         * root), the root given (not in place) and every mirror but the last.
         * umount2(".") takes the topmost each time. */
        int layers = rerooted ? !in_place + rerooted : 1;
        for (int i = 0; i < layers; i++)
            TRY(s, NSBOX_STAGE_PIVOT_ROOT, 0, sys_umount2(".", MNT_DETACH));
    }
    /* Off the caller's directory, which may now lie under one of our mounts
     * (change_dir goes back to it by path, in the sandbox's view). */
    TRY(s, NSBOX_STAGE_PIVOT_ROOT, 0, chdir("/"));
    close(root);
}

static void set_hostname(const struct nsbox_spec *s)
{
    if (!s->hostname)
        return;
    inject(s, NSBOX_STAGE_HOSTNAME, 0);
    TRY(s, NSBOX_STAGE_HOSTNAME, 0, sethostname(s->hostname, strlen(s->hostname)));
}

/* A new net namespace has lo down; most programs expect 127.0.0.1 to work. */
static void loopback_up(const struct nsbox_spec *s)
{
    if (!(s->namespaces & NSBOX_NS_NET))
        return;
    inject(s, NSBOX_STAGE_LOOPBACK, 0);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    TRY(s, NSBOX_STAGE_LOOPBACK, 0, fd);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "lo", 3);
    TRY(s, NSBOX_STAGE_LOOPBACK, 0, ioctl(fd, SIOCGIFFLAGS, &ifr));
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    TRY(s, NSBOX_STAGE_LOOPBACK, 0, ioctl(fd, SIOCSIFFLAGS, &ifr));
    close(fd);
}

/* Without a user namespace, root callers may still ask for another identity. */
static void set_ids(const struct nsbox_spec *s)
{
    if (s->setid_uid < 0 && s->setid_gid < 0)
        return;
    inject(s, NSBOX_STAGE_SETID, 0);
    TRY(s, NSBOX_STAGE_SETID, 0, (int)syscall(SYS_setgroups, 0, NULL));
    if (s->setid_gid >= 0)
        TRY(s, NSBOX_STAGE_SETID, 0,
            (int)syscall(SYS_setresgid, (gid_t)s->setid_gid, (gid_t)s->setid_gid,
                         (gid_t)s->setid_gid));
    if (s->setid_uid >= 0)
        TRY(s, NSBOX_STAGE_SETID, 0,
            (int)syscall(SYS_setresuid, (uid_t)s->setid_uid, (uid_t)s->setid_uid,
                         (uid_t)s->setid_uid));
}

/*
 * After the last privileged step: shrink the capability bounding set to
 * keep_caps (docker's default set unless asked otherwise), so the command,
 * root in its user namespace, cannot undo the mounts (remount / read-write,
 * unmount a mirror to reach what it hides); and no_new_privs, so no exec can
 * gain privileges again.
 */
static void drop_caps(const struct nsbox_spec *s)
{
    inject(s, NSBOX_STAGE_CAPS, 0);
    for (int cap = 0; cap < 64; cap++) {
        if (s->keep_caps & ((uint64_t)1 << cap))
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            if (errno == EINVAL)
                break; /* past the kernel's last capability */
            /* An unprivileged caller without a user namespace may not lower
             * it, and need not: with no ambient capabilities and
             * no_new_privs (below), nothing it execs can gain one. */
            if (errno == EPERM && !(s->namespaces & NSBOX_NS_USER) && geteuid() != 0)
                break;
            fail(s, NSBOX_STAGE_CAPS, errno, cap);
        }
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        fail(s, NSBOX_STAGE_CAPS, errno, 64);
    TRY(s, NSBOX_STAGE_CAPS, 64, prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
}

/* stdio onto 0-2, then every other fd close-on-exec except those to keep. */
static void arrange_fds(const struct nsbox_spec *s)
{
    inject(s, NSBOX_STAGE_FDS, 3);
    int src[3];
    for (int i = 0; i < 3; i++) {
        src[i] = s->stdio[i];
        /* A source among 0-2 could be overwritten by an earlier dup2: move it up. */
        if (src[i] >= 0 && src[i] < 3 && src[i] != i) {
            src[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 3);
            TRY(s, NSBOX_STAGE_FDS, i, src[i]);
        }
    }
    for (int i = 0; i < 3; i++) {
        if (src[i] < 0)
            continue;
        if (src[i] == i)
            TRY(s, NSBOX_STAGE_FDS, i, fcntl(i, F_SETFD, 0));
        else
            TRY(s, NSBOX_STAGE_FDS, i, dup2(src[i], i));
    }
    TRY(s, NSBOX_STAGE_FDS, 3, sys_close_range(3, ~0U, CLOSE_RANGE_CLOEXEC));
    for (uint32_t i = 0; i < s->n_keep_fds; i++)
        TRY(s, NSBOX_STAGE_FDS, 4 + (int)i, fcntl(s->keep_fds[i], F_SETFD, 0));
}

static void change_dir(const struct nsbox_spec *s)
{
    inject(s, NSBOX_STAGE_CHDIR, 0);
    if (!s->cwd)
        return;
    if (chdir(s->cwd) == 0)
        return;
    if (s->cwd_flags & NSBOX_CWD_REQUIRED)
        fail(s, NSBOX_STAGE_CHDIR, errno, 0);
    TRY(s, NSBOX_STAGE_CHDIR, 0, chdir("/"));
}

/*
 * With a network: wait for the hop to have put our eth0 here (it runs beside
 * us, so the mounts above overlapped its wiring), then address it.
 */
static void network_up(const struct nsbox_ctx *ctx)
{
    const struct nsbox_spec *s = ctx->spec;
    if (s->net_hub_fd < 0)
        return; /* (failure injection: the hop's, see net.c) */
    int32_t go;
    while ((go = ctx->go) == 0)
        syscall(SYS_futex, &ctx->go, FUTEX_WAIT, 0, NULL, NULL, 0);
    if (go < 0)
        fail(s, NSBOX_STAGE_NETWORK, -go, ctx->go_index);
    int index = 0;
    int err = nsbox_net_inside(s, &index);
    if (err)
        fail(s, NSBOX_STAGE_NETWORK, err, index);
}

NSBOX_HIDDEN int nsbox_child_main(void *arg)
{
    const struct nsbox_ctx *ctx = arg;
    const struct nsbox_spec *s = ctx->spec;
    mark_phase(s->timings, NSBOX_PHASE_CHILD);
    restore_signals();
    die_with_parent(s);
    join_cgroup(s);
    mark_phase(s->timings, NSBOX_PHASE_CGROUP);
    write_id_maps(s);
    mark_phase(s->timings, NSBOX_PHASE_ID_MAP);
    build_filesystem(s);
    mark_phase(s->timings, NSBOX_PHASE_MOUNTS);
    set_hostname(s);
    loopback_up(s);
    network_up(ctx);
    mark_phase(s->timings, NSBOX_PHASE_NETWORK);
    drop_caps(s);
    set_ids(s);
    mark_phase(s->timings, NSBOX_PHASE_PRIVILEGES);
    arrange_fds(s);
    change_dir(s);
    inject(s, NSBOX_STAGE_EXEC_INIT, 0);
    mark_phase(s->timings, NSBOX_PHASE_EXEC_INIT);
    sys_execveat(s->init_fd, "", s->init_argv, s->envp, AT_EMPTY_PATH);
    fail(s, NSBOX_STAGE_EXEC_INIT, errno, 0);
}
