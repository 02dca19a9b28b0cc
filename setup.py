"""Build glue: the cffi extension, plus nsbox-init, the sandbox's pid 1.

nsbox-init is a small static executable (csrc/init.c) installed next to the
extension module; metadata lives in pyproject.toml.
"""

import os
import platform
import shlex
import subprocess
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext

INIT_SOURCES = ["csrc/init.c"]
INIT_NAME = "nsbox-init"
NOLIBC_FLAGS = [
    "-DNSBOX_NOLIBC", "-ffreestanding", "-fno-builtin", "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables", "-fno-pie", "-no-pie", "-nostdlib", "-static",
]


class BuildExtWithInit(build_ext):
    def copy_file(self, infile, outfile, *args, **kwargs):
        # Replace, never rewrite in place: running processes have the old
        # module mapped, and rewriting a mapped file crashes them.
        if os.path.isfile(outfile):
            os.unlink(outfile)
        return super().copy_file(infile, outfile, *args, **kwargs)

    def run(self):
        super().run()
        target_dir = os.path.dirname(self.get_ext_fullpath("nsbox._nsbox_cffi"))
        os.makedirs(target_dir, exist_ok=True)
        out = os.path.join(target_dir, INIT_NAME)
        tmp = out + ".tmp"
        cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
        base = cc + ["-O2", "-std=gnu11", "-Wall", "-Icsrc", "-o", tmp, *INIT_SOURCES]
        # Static, and without a libc where csrc/initrt.h can: every sandbox
        # execs this, and a static glibc's start-up alone costs ~0.3 ms.
        attempts = [base + ["-static"], base]
        if platform.machine() in ("x86_64", "aarch64"):
            attempts.insert(0, base + NOLIBC_FLAGS)
        for i, cmd in enumerate(attempts):
            last = i == len(attempts) - 1
            try:
                subprocess.run(cmd, check=True, capture_output=not last)
                break
            except subprocess.CalledProcessError:
                if last:
                    raise
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)  # atomic: a running nsbox-init keeps its inode


setup(
    cffi_modules=["csrc/build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithInit},
)
