"""MMIDIDX reader/writer: round trips, document indices, slicing, and corrupt-file detection."""

import os
import shutil
import struct

import numpy as np
import pytest

from megatron.core.datasets.indexed_dataset import (
    INDEX_HEADER_SIZE,
    DType,
    IndexedDataset,
    IndexedDatasetBuilder,
    IndexedDatasetError,
    write_array_dataset,
)

# documents of sequences (token lists); includes an empty sequence
DOCS = [[[1, 2, 3], [4]], [[5, 6, 7, 8, 9]], [[], [10, 11], [12]]]
N_SEQ = sum(len(d) for d in DOCS)


def _write(prefix, docs=DOCS, dtype=np.int32):
    with IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype) as b:
        for doc in docs:
            for seq in doc:
                b.add_item(np.asarray(seq, dtype=dtype))
            b.end_document()
        b.finalize(f"{prefix}.idx")
    return prefix


def _random_values(rng, dtype, n):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(n).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=n, endpoint=True, dtype=dtype)


@pytest.mark.parametrize("code", list(DType), ids=lambda c: c.name)
def test_round_trip_every_dtype(tmp_path, code):
    rng = np.random.default_rng(int(code))
    dtype = code.numpy()
    docs = [
        [_random_values(rng, dtype, int(n)) for n in rng.integers(0, 9, size=k)] for k in (1, 3, 2)
    ]
    prefix = str(tmp_path / "ds")
    with IndexedDatasetBuilder(prefix + ".bin", dtype=dtype) as b:
        for doc in docs:
            for seq in doc:
                b.add_item(seq)
            b.end_document()
        b.finalize(prefix + ".idx")
    assert open(prefix + ".idx", "rb").read(INDEX_HEADER_SIZE)[17] == int(code)
    ds = IndexedDataset(prefix)
    flat = [seq for doc in docs for seq in doc]
    assert ds.dtype == dtype and len(ds) == len(flat)
    assert ds.sequence_lengths.tolist() == [len(s) for s in flat]
    for i, seq in enumerate(flat):
        np.testing.assert_array_equal(ds[i], seq)
    assert ds.document_indices.tolist() == [0, 1, 4, 6]
    # the reader works with mmap=False too
    np.testing.assert_array_equal(IndexedDataset(prefix, mmap=False)[5], flat[5])


def test_document_indices_and_sequences(tmp_path):
    ds = IndexedDataset(_write(str(tmp_path / "ds")))
    assert ds.num_documents == 3
    assert ds.document_indices.tolist() == [0, 2, 3, 6]
    assert ds.doc_idx is not None and ds.sizes.tolist() == [3, 1, 5, 0, 2, 1]
    assert list(ds.document_sequences(2)) == [3, 4, 5]
    assert [ds[i].tolist() for i in ds.document_sequences(0)] == DOCS[0]
    assert ds.sequence_pointers.tolist() == [0, 12, 16, 36, 36, 44]
    assert IndexedDataset.exists(ds.path_prefix)
    assert not IndexedDataset.exists(str(tmp_path / "nope"))


def test_get_with_offset_and_length(tmp_path):
    ds = IndexedDataset(_write(str(tmp_path / "ds")))
    assert ds.get(2).tolist() == [5, 6, 7, 8, 9]
    assert ds.get(2, offset=1).tolist() == [6, 7, 8, 9]
    assert ds.get(2, offset=1, length=3).tolist() == [6, 7, 8]
    assert ds.get(2, offset=5).tolist() == []
    assert ds.get(-1).tolist() == [12]
    assert ds[3].tolist() == []
    for bad in [dict(idx=6), dict(idx=-7), dict(idx=2, offset=6), dict(idx=2, offset=2, length=4),
                dict(idx=2, offset=-1)]:  # fmt: skip
        with pytest.raises(IndexError):
            ds.get(**bad)
    with pytest.raises(TypeError):
        ds[0:2]


def test_empty_dataset(tmp_path):
    prefix = str(tmp_path / "empty")
    write_array_dataset(prefix, [], np.uint16)
    ds = IndexedDataset(prefix)
    assert len(ds) == 0 and ds.num_documents == 0 and ds.document_indices.tolist() == [0]
    assert os.path.getsize(prefix + ".bin") == 0
    assert os.path.getsize(prefix + ".idx") == INDEX_HEADER_SIZE + 8
    with pytest.raises(IndexError):
        ds[0]


def test_builder_leaves_nothing_on_abort(tmp_path):
    prefix = str(tmp_path / "ds")
    with pytest.raises(RuntimeError):
        with IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16) as b:
            b.add_item([1, 2])
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="do not fit uint16"):
        with IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16) as b:
            b.add_item([70000])
    assert os.listdir(tmp_path) == []


def test_failed_finalize_leaves_nothing(tmp_path, monkeypatch):
    import megatron.core.datasets.indexed_dataset as indexed

    def failing_write_index(path, *args):
        open(path, "wb").write(b"MMIDIDX")  # a partial index, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(indexed, "write_index", failing_write_index)
    prefix = str(tmp_path / "ds")
    with pytest.raises(OSError, match="No space"):
        with IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32) as b:
            b.add_item([1, 2, 3])
            b.finalize(prefix + ".idx")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- corrupt files


@pytest.fixture
def good(tmp_path):
    """A valid int32 dataset and its file contents."""
    prefix = _write(str(tmp_path / "good"))
    return prefix, open(prefix + ".idx", "rb").read(), open(prefix + ".bin", "rb").read()


def _corrupt(tmp_path, idx: bytes, binary: bytes, name="bad"):
    prefix = str(tmp_path / name)
    with open(prefix + ".idx", "wb") as f:
        f.write(idx)
    with open(prefix + ".bin", "wb") as f:
        f.write(binary)
    return prefix


def _expect_error(prefix, match, path_suffix=".idx"):
    with pytest.raises(IndexedDatasetError, match=match) as e:
        IndexedDataset(prefix)
    assert prefix + path_suffix in str(e.value)
    return str(e.value)


def _patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    packed = struct.pack(fmt, value)
    return data[:offset] + packed + data[offset + len(packed) :]


SIZES_AT = INDEX_HEADER_SIZE
POINTERS_AT = SIZES_AT + 4 * N_SEQ
DOCS_AT = POINTERS_AT + 8 * N_SEQ


def test_truncated_index_at_every_length(tmp_path, good):
    _, idx, binary = good
    for length in range(len(idx)):
        prefix = _corrupt(tmp_path, idx[:length], binary, name=f"t{length}")
        msg = _expect_error(prefix, "truncated|shorter than")
        assert str(length) in msg


def test_truncated_and_oversized_bin(tmp_path, good):
    _, idx, binary = good
    for data in (binary[:-1], binary[: len(binary) // 2], b""):
        prefix = _corrupt(tmp_path, idx, data)
        _expect_error(prefix, "data file truncated", ".bin")
    prefix = _corrupt(tmp_path, idx, binary + b"\0" * 4)
    _expect_error(prefix, "larger than the index", ".bin")


def test_bad_magic_version_dtype(tmp_path, good):
    _, idx, binary = good
    _expect_error(_corrupt(tmp_path, b"TNTIDX\0\0\0" + idx[9:], binary), "bad magic")
    _expect_error(_corrupt(tmp_path, _patch(idx, 9, "<Q", 2), binary), "unsupported version 2")
    for code in (0, 9, 255):
        _expect_error(_corrupt(tmp_path, _patch(idx, 17, "<B", code), binary), f"dtype code {code}")


def test_header_counts_inconsistent_with_file_size(tmp_path, good):
    _, idx, binary = good
    _expect_error(_corrupt(tmp_path, _patch(idx, 18, "<Q", N_SEQ + 1), binary), "truncated")
    _expect_error(_corrupt(tmp_path, _patch(idx, 26, "<Q", 3), binary), "trailing bytes")
    _expect_error(_corrupt(tmp_path, _patch(idx, 18, "<Q", 2**63), binary), "truncated")
    _expect_error(_corrupt(tmp_path, idx + b"\0", binary), "trailing bytes")


def test_inconsistent_sizes_and_pointers(tmp_path, good):
    _, idx, binary = good
    _expect_error(
        _corrupt(tmp_path, _patch(idx, POINTERS_AT + 8 * 2, "<q", 20), binary),
        "pointer of sequence 2",
    )
    _expect_error(
        _corrupt(tmp_path, _patch(idx, POINTERS_AT, "<q", 4), binary), "pointer of sequence 0"
    )
    _expect_error(_corrupt(tmp_path, _patch(idx, SIZES_AT + 4, "<i", -1), binary), "negative size")
    # a larger size shifts every later pointer: the first mismatch is reported
    _expect_error(
        _corrupt(tmp_path, _patch(idx, SIZES_AT + 4, "<i", 2), binary), "pointer of sequence 2"
    )
    # the last size only changes the data length
    _expect_error(
        _corrupt(tmp_path, _patch(idx, SIZES_AT + 4 * 5, "<i", 2), binary), "truncated", ".bin"
    )


def test_document_index_corruption(tmp_path, good):
    _, idx, binary = good
    last = DOCS_AT + 8 * 3
    _expect_error(
        _corrupt(tmp_path, _patch(idx, last, "<q", N_SEQ - 1), binary), "end at the number"
    )
    _expect_error(
        _corrupt(tmp_path, _patch(idx, last, "<q", N_SEQ + 1), binary), "document indices"
    )
    _expect_error(_corrupt(tmp_path, _patch(idx, DOCS_AT, "<q", 1), binary), "start at 0")
    _expect_error(_corrupt(tmp_path, _patch(idx, DOCS_AT + 8, "<q", 4), binary), "never decrease")


def test_missing_files_named(tmp_path, good):
    prefix, idx, binary = good
    os.remove(prefix + ".bin")
    with pytest.raises(IndexedDatasetError, match="no such file") as e:
        IndexedDataset(prefix)
    assert prefix + ".bin" in str(e.value)
    with pytest.raises(IndexedDatasetError, match="no such file"):
        IndexedDataset(str(tmp_path / "absent"))


def _read_everything(ds):
    total = 0
    for i in range(len(ds)):
        total += ds[i].size
    for d in range(ds.num_documents):
        for i in ds.document_sequences(d):
            ds.get(i, offset=0)
    return total


def _is_valid_index(data: bytes, bin_size: int) -> bool:
    """The MMIDIDX rules, checked from the format description independently of the reader:
    magic, version 1, a known dtype code, counts that match the file size, non-negative sizes,
    contiguous pointers from 0 covering the .bin exactly, document indices 0 .. N never
    decreasing."""
    if len(data) < 34 or data[:9] != b"MMIDIDX\x00\x00" or data[9:17] != struct.pack("<Q", 1):
        return False
    if data[17] not in {int(c) for c in DType}:
        return False
    itemsize = DType(data[17]).numpy().itemsize
    n, d = struct.unpack_from("<QQ", data, 18)
    if len(data) != 34 + 12 * n + 8 * d or d == 0:
        return False
    sizes = struct.unpack_from(f"<{n}i", data, 34)
    pointers = struct.unpack_from(f"<{n}q", data, 34 + 4 * n)
    docs = struct.unpack_from(f"<{d}q", data, 34 + 12 * n)
    end = 0
    for size, pointer in zip(sizes, pointers):
        if size < 0 or pointer != end:
            return False
        end += size * itemsize
    ordered = all(a <= b for a, b in zip(docs, docs[1:]))
    return end == bin_size and docs[0] == 0 and docs[-1] == n and ordered


def test_fuzz_flipped_index_bytes(tmp_path, good):
    """A corrupted .idx loads if and only if it is still a valid index of the .bin: every
    corruption the format can detect raises IndexedDatasetError, and what loads is consistent.

    A flip is undetectable only where the format leaves a choice: an interior document boundary
    that still never decreases, or a dtype code of the same width (int32 4 -> float32 7, two
    bits). Every one of the 1,104 single-bit flips and 400 random flips of 1-3 bytes is checked
    against an independent reading of the format (`_is_valid_index`); of the single-bit flips
    exactly three must load (the boundary 2 -> 3 or 0, the boundary 3 -> 2). Any other exception
    fails the test; a crash (segfault) would kill pytest.
    """
    prefix, idx, binary = good
    rng = np.random.default_rng(1234)
    shutil.copy(prefix + ".bin", str(tmp_path / "fz.bin"))
    single_bits = [[(pos, 1 << bit)] for pos in range(len(idx)) for bit in range(8)]
    random_flips = [
        [(int(pos), int(rng.integers(1, 256))) for pos in rng.integers(0, len(idx), size=n)]
        for n in rng.integers(1, 4, size=400)
    ]
    loaded = []
    for trial, flips in enumerate(single_bits + random_flips):
        data = bytearray(idx)
        for pos, mask in flips:
            data[pos] ^= mask
        with open(tmp_path / "fz.idx", "wb") as f:
            f.write(bytes(data))
        valid = _is_valid_index(bytes(data), len(binary))
        try:
            ds = IndexedDataset(str(tmp_path / "fz"))
        except IndexedDatasetError:
            assert not valid, f"trial {trial}: {flips} keep the index valid, yet it was refused"
            continue
        assert valid, f"trial {trial}: flips {flips} corrupt the index, but it loaded"
        loaded.append(trial)
        # what loaded must be self-consistent: every sequence readable, data fully covered
        total = _read_everything(ds)
        assert total * ds.dtype.itemsize == len(binary), f"trial {trial}"
        assert ds.document_indices[0] == 0 and ds.document_indices[-1] == len(ds)
    boundary_1, boundary_2 = DOCS_AT + 8, DOCS_AT + 16  # document indices [0, 2, 3, 6]
    assert [single_bits[t][0] for t in loaded if t < len(single_bits)] == [
        (boundary_1, 1), (boundary_1, 2), (boundary_2, 1)]  # fmt: skip


def test_fuzz_truncated_bin_and_random_garbage(tmp_path, good):
    _, idx, binary = good
    rng = np.random.default_rng(99)
    for _ in range(100):
        garbage = rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        header = idx[: int(rng.integers(0, INDEX_HEADER_SIZE + 1))]
        prefix = _corrupt(tmp_path, header + garbage, binary, name="g")
        try:
            ds = IndexedDataset(prefix)
        except IndexedDatasetError:
            continue
        _read_everything(ds)
