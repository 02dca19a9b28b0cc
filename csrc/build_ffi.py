"""cffi builder for nsbox's native core (out-of-line API mode).

The cdef is the region of csrc/nsbox.h between the NSBOX_CDEF markers, so C
and Python share one definition of stages, records and the spec layout.
"""

import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
HEADER = (HERE / "nsbox.h").read_text()
CDEF = HEADER.split("/* NSBOX_CDEF_BEGIN */", 1)[1].split("/* NSBOX_CDEF_END */", 1)[0]

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "nsbox._nsbox_cffi",
    '#include "nsbox.h"\n',
    sources=["csrc/spawn.c", "csrc/child.c", "csrc/net.c"],
    include_dirs=["csrc"],
    extra_compile_args=["-O2", "-std=gnu11", "-fvisibility=hidden", "-fno-strict-aliasing"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
