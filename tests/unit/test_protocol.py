"""The report record decoder (sans-io): chunking never changes what it yields."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsbox._protocol import (
    ERROR,
    EXITED,
    MAGIC,
    RECORD_SIZE,
    STARTED,
    Decoder,
    ProtocolError,
    Record,
    decode_one,
    encode,
)

INT32 = st.integers(-(2**31), 2**31 - 1)
records = st.builds(Record, st.sampled_from([ERROR, STARTED, EXITED]), INT32, INT32, INT32, INT32)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def decode_all(chunks) -> tuple[list[Record], int]:
    dec = Decoder()
    out: list[Record] = []
    for chunk in chunks:
        out.extend(dec.feed(chunk))
    return out, dec.pending


@given(st.lists(records, max_size=20), st.lists(st.integers(0, 10**6), max_size=30))
def test_decoding_is_independent_of_chunking(recs, cuts):
    data = b"".join(map(encode, recs))
    assert decode_all([data]) == (recs, 0)
    assert decode_all(split(data, cuts)) == (recs, 0)
    assert decode_all([data[i : i + 1] for i in range(len(data))]) == (recs, 0)


@given(st.lists(records, min_size=1, max_size=5), st.integers(1, RECORD_SIZE - 1),
       st.lists(st.integers(0, 10**6), max_size=10))
def test_pending_reports_truncation(recs, cut, cuts):
    data = b"".join(map(encode, recs))[:-cut]
    got, pending = decode_all(split(data, cuts))
    assert got == recs[:-1]
    assert pending == RECORD_SIZE - cut


@given(records)
def test_encode_decode_round_trip(rec):
    data = encode(rec)
    assert len(data) == RECORD_SIZE
    assert decode_one(data) == rec


@given(st.integers(0, 2**32 - 1).filter(lambda m: m != MAGIC), records)
def test_bad_magic(magic, rec):
    data = struct.pack("=I", magic) + encode(rec)[4:]
    with pytest.raises(ProtocolError, match="magic"):
        Decoder().feed(data)
    assert issubclass(ProtocolError, ValueError)


def test_time_record_carries_64_bits():
    for ns in (0, 1, 2**32 - 1, 2**32, 1_700_000_000_123_456_789, 2**64 - 1):
        hi, lo = ns >> 32, ns & 0xFFFFFFFF
        to_i32 = lambda x: x - 2**32 if x >= 2**31 else x  # noqa: E731 - as C stores it
        data = struct.pack("=Iiiiii", MAGIC, 4, 7, 0, to_i32(hi), to_i32(lo))
        (rec,) = Decoder().feed(data)
        assert (rec.kind, rec.stage, rec.time_ns) == (4, 7, ns)


@pytest.mark.parametrize("kind", [0, 5, -1, 99])
def test_unknown_kind(kind):
    data = struct.pack("=Iiiiii", MAGIC, kind, 0, 0, 0, 0)
    with pytest.raises(ProtocolError, match="kind"):
        Decoder().feed(data)


def test_empty_and_partial_feeds():
    dec = Decoder()
    assert dec.feed(b"") == [] and dec.pending == 0
    data = encode(Record(STARTED, value=7))
    assert dec.feed(data[:5]) == [] and dec.pending == 5
    assert dec.feed(data[5:] + data[:1]) == [Record(STARTED, value=7)]
    assert dec.pending == 1


def test_record_layout():
    # Six native-endian 32-bit fields: magic, kind, stage, err, index, value.
    assert RECORD_SIZE == 24
    data = encode(Record(ERROR, stage=8, err=2, index=3, value=-1))
    assert struct.unpack("=Iiiiii", data) == (MAGIC, ERROR, 8, 2, 3, -1)
