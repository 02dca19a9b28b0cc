"""Python's copies of the C constants match the compiled module (csrc/nsbox.h)."""

from __future__ import annotations

import pathlib
import re

import pytest

from nsbox import _errors, _native, _plan, _protocol

lib, ffi = _native.lib, _native.ffi
CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"


@pytest.fixture(autouse=True)
def _tier():
    """Constants need the built module only, not user namespaces (overrides the tier's)."""


def _lib_constants(prefix: str) -> dict[str, int]:
    return {name[len(prefix):]: getattr(lib, name) for name in dir(lib) if name.startswith(prefix)}


def test_stage_numbers_match():
    c_stages = _lib_constants("NSBOX_STAGE_")
    count = c_stages.pop("COUNT")
    expected = {name.upper().replace("-", "_"): number
                for number, name in _errors.STAGE_NAMES.items()}
    assert c_stages == expected
    assert count == len(_errors.STAGE_NAMES)


def test_namespace_bits_match():
    c_bits = _lib_constants("NSBOX_NS_")
    assert c_bits == {name.upper(): bit for name, bit in _plan.NS_BITS.items()}


def test_mount_kinds_and_flags_match():
    assert _lib_constants("NSBOX_MNT_") == {
        "BIND": _plan.MNT_BIND, "TMPFS": _plan.MNT_TMPFS, "PROC": _plan.MNT_PROC,
        "DEV": _plan.MNT_DEV,
    }
    assert _lib_constants("NSBOX_MF_") == {
        "READONLY": _plan.MF_READONLY, "IN_SCRATCH": _plan.MF_IN_SCRATCH,
    }
    # _native.spawn writes 1 for root_flags (read-only root) and cwd_flags (required).
    assert lib.NSBOX_MF_READONLY == 1
    assert lib.NSBOX_CWD_REQUIRED == 1


def test_protocol_matches():
    assert _protocol.MAGIC == lib.NSBOX_REPORT_MAGIC
    assert _lib_constants("NSBOX_REPORT_") == {
        "MAGIC": _protocol.MAGIC, "ERROR": _protocol.ERROR, "STARTED": _protocol.STARTED,
        "EXITED": _protocol.EXITED, "TIME": _protocol.TIME,
    }
    assert ffi.sizeof("struct nsbox_report") == _protocol.RECORD_SIZE
    # Field order and types match the struct format "=Iiiiii".
    fields = ffi.typeof("struct nsbox_report").fields
    assert [name for name, _ in fields] == ["magic", "kind", "stage", "err", "index", "value"]
    assert [f.type.cname for _, f in fields] == ["uint32_t"] + ["int32_t"] * 5
    assert [f.offset for _, f in fields] == [0, 4, 8, 12, 16, 20]


def test_record_decodes_a_c_struct():
    rec = ffi.new("struct nsbox_report *")
    rec.magic, rec.kind, rec.stage, rec.err, rec.index, rec.value = (
        lib.NSBOX_REPORT_MAGIC, lib.NSBOX_REPORT_ERROR, lib.NSBOX_STAGE_MOUNT, 2, 3, -7)
    got = _protocol.Decoder().feed(bytes(ffi.buffer(rec)))
    assert got == [_protocol.Record(_protocol.ERROR, _errors.STAGE_NUMBERS["mount"], 2, 3, -7)]


def test_abi_and_init_constants():
    assert lib.NSBOX_ABI_VERSION >= 1
    init_c = CSRC / "init.c"
    if not init_c.exists():
        pytest.skip("csrc/ is not next to the tests (installed package)")
    m = re.search(r"#define\s+INIT_PID1\s+(\d+)", init_c.read_text())
    assert m and int(m.group(1)) == _native.INIT_PID1


def test_phases_match():
    from nsbox._process import PHASES

    c_phases = _lib_constants("NSBOX_PHASE_")
    count = c_phases.pop("COUNT")
    # PHASES: "start", the C phases in their order, "reaped".
    assert [name.lower() for name, _ in sorted(c_phases.items(), key=lambda kv: kv[1])] == \
        list(PHASES[1:-1])
    assert sorted(c_phases.values()) == list(range(count))
