"""The other sandbox tools, driven for the latency part when they run here.

Each peer gets the nearest thing to nsbox's default sandbox it offers, for the
"all" namespace set (user, mount, pid, uts, ipc, net, cgroup), and says where it
differs; a peer that is missing, needs root we do not have, or fails a probe
run gets one line saying why (never silently left out):

- runc, crun: an OCI bundle made once in the suite's cache: a rootfs directory
  with /usr and /etc bound read-only (runc cannot use / itself as the root:
  pivot_root needs a mount point of its own), /proc, a tmpfs /dev, /dev/pts,
  /dev/shm, /dev/mqueue, /sys, a tmpfs /tmp; all seven namespaces, the caller's
  uid mapped to 0; `run` with a fresh container id, no cgroup limits.
- firejail: `--noprofile --net=none --noroot` (a user namespace, and a net
  namespace with only lo; its own mount, pid namespaces).
- systemd-nspawn: `--volatile=yes -D / --private-network` (the host's / under a
  tmpfs, its own mount, pid, uts, ipc, net namespaces; no user namespace: its
  user namespaces shift the whole tree's ownership), root only.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import shutil
from collections.abc import Callable

PACKAGES = {"runc": "runc", "crun": "crun", "firejail": "firejail",
            "systemd-nspawn": "systemd-container"}
_ids = itertools.count()


def _oci_config(rootfs: pathlib.Path) -> dict:
    uid, gid = os.getuid(), os.getgid()
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

    def mount(dst, typ, src, *opts):
        return {"destination": dst, "type": typ, "source": src, "options": list(opts)}

    return {
        "ociVersion": "1.0.2",
        "root": {"path": str(rootfs), "readonly": True},
        "process": {
            "terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["true"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/", "noNewPrivileges": True,
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        },
        "hostname": "bench",
        "mounts": [
            mount("/proc", "proc", "proc"),
            mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
            mount("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance",
                  "ptmxmode=0666", "mode=0620"),
            mount("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777",
                  "size=65536k"),
            mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
            mount("/sys", "none", "/sys", "rbind", "nosuid", "noexec", "nodev", "ro"),
            mount("/tmp", "tmpfs", "tmpfs", "nosuid", "nodev", "mode=1777"),
            mount("/usr", "bind", "/usr", "rbind", "ro"),
            mount("/etc", "bind", "/etc", "rbind", "ro"),
        ],
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": uid, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": gid, "size": 1}],
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "user",
                                                 "mount", "cgroup")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def _bundle(cache: pathlib.Path) -> pathlib.Path:
    bundle = cache / "oci-bundle"
    rootfs = bundle / "rootfs"
    for d in ("usr", "etc", "proc", "dev", "sys", "tmp"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        path = rootfs / link
        if not path.is_symlink() and os.path.lexists(f"/{link}"):
            path.symlink_to(f"usr/{link}")
    config = json.dumps(_oci_config(rootfs), indent=1)
    target = bundle / "config.json"
    if not target.exists() or target.read_text() != config:
        target.write_text(config)
    return bundle


def commands(cache: pathlib.Path) -> dict[str, tuple[Callable[[], list[str]], str] | str]:
    """peer -> (a maker of the argv for one run, what it is), or why it cannot run."""
    out: dict = {}
    root = os.geteuid() == 0
    for oci in ("runc", "crun"):
        path = shutil.which(oci)
        if not path:
            out[oci] = f"not installed (Debian: apt-get install {PACKAGES[oci]})"
            continue
        if not root:
            out[oci] = "needs root here (rootless runc/crun need a systemd user session)"
            continue
        bundle = _bundle(cache)
        state = cache / f"{oci}-state"
        extra = ["--cgroup-manager=disabled"] if oci == "crun" else []

        def argv(path=path, state=state, extra=extra, bundle=bundle, oci=oci):
            return [path, *extra, "--root", str(state), "run", "--bundle", str(bundle),
                    f"nsbx-bench-{oci}-{os.getpid()}-{next(_ids)}"]

        out[oci] = (argv, f"{oci} run: an OCI bundle (rootfs with /usr, /etc bound read-only, "
                          "/proc, /dev, /sys, /tmp), all seven namespaces, no cgroup limits")
    path = shutil.which("firejail")
    if not path:
        out["firejail"] = "not installed (Debian: apt-get install firejail)"
    else:
        argv = [path, "--quiet", "--noprofile", "--net=none", "--noroot", "true"]
        out["firejail"] = ((lambda argv=argv: argv),
                           "firejail --noprofile --net=none --noroot true: user, mount, pid "
                           "and net namespaces (no uts, ipc, cgroup)")
    path = shutil.which("systemd-nspawn")
    if not path:
        out["systemd-nspawn"] = "not installed (Debian: apt-get install systemd-container)"
    elif not root:
        out["systemd-nspawn"] = "needs root"
    else:
        def nspawn_argv(path=path):
            return [path, "-q", "--register=no", "--keep-unit", "--volatile=yes", "-D", "/",
                    "--private-network", "--machine", f"nsbx-bench-{os.getpid()}-{next(_ids)}",
                    "true"]

        out["systemd-nspawn"] = (nspawn_argv, "systemd-nspawn --volatile=yes -D / "
                                              "--private-network true: mount, pid, uts, ipc, "
                                              "net namespaces (no user namespace)")
    return out
