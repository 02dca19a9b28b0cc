"""Decoding the child's and init's report records (pure, sans-io).

Records are fixed-size `struct nsbox_report` values (csrc/nsbox.h): six
native-endian 32-bit integers. The decoder is fed bytes in any chunking and
yields whole records; what it yields does not depend on how bytes arrive.
"""

from __future__ import annotations

import struct

from ._frozen import Frozen

__all__ = ["Record", "Decoder", "RECORD_SIZE", "MAGIC", "ERROR", "STARTED", "EXITED", "TIME",
           "ProtocolError", "encode"]

MAGIC = 1313096241
ERROR, STARTED, EXITED, TIME = 1, 2, 3, 4
_FORMAT = struct.Struct("=Iiiiii")
RECORD_SIZE = _FORMAT.size


class ProtocolError(ValueError):
    """Bytes that are not a record stream from nsbox's C side."""


class Record(Frozen):
    __slots__ = ("kind", "stage", "err", "index", "value")
    kind: int
    stage: int
    err: int
    index: int
    value: int

    def __init__(self, kind: int, stage: int = 0, err: int = 0, index: int = 0, value: int = 0):
        self._set("kind", kind)
        self._set("stage", stage)
        self._set("err", err)
        self._set("index", index)
        self._set("value", value)

    @property
    def time_ns(self) -> int:
        """A TIME record's timestamp: 64 bits of ns in index (high) and value (low)."""
        return ((self.index & 0xFFFFFFFF) << 32) | (self.value & 0xFFFFFFFF)


def encode(record: Record) -> bytes:
    return _FORMAT.pack(MAGIC, record.kind, record.stage, record.err, record.index, record.value)


def decode_one(data: bytes) -> Record:
    magic, kind, stage, err, index, value = _FORMAT.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad record magic {magic:#x}")
    if kind not in (ERROR, STARTED, EXITED, TIME):
        raise ProtocolError(f"unknown record kind {kind}")
    return Record(kind, stage, err, index, value)


class Decoder:
    """Accumulates bytes, returns complete records."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[Record]:
        buf = self._buf + data
        n = len(buf) - len(buf) % RECORD_SIZE
        self._buf = buf[n:]
        return [decode_one(buf[i : i + RECORD_SIZE]) for i in range(0, n, RECORD_SIZE)]

    @property
    def pending(self) -> int:
        """Bytes of an incomplete record (non-zero at EOF means truncation)."""
        return len(self._buf)
