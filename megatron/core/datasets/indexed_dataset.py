"""Memory-mapped indexed dataset in Megatron's `MMIDIDX` format (`.bin` + `.idx`).

Layout of the `.idx` file (little-endian), byte-compatible with Megatron-LM / megatron-core:

    offset 0   magic  b"MMIDIDX\\x00\\x00"      (9 bytes)
    offset 9   uint64 version = 1
    offset 17  uint8  dtype code                (see `DType`)
    offset 18  uint64 number of sequences N
    offset 26  uint64 number of document boundaries D (= documents + 1, first entry 0)
    offset 34  int32  sizes[N]                  tokens per sequence
               int64  pointers[N]               byte offset of each sequence in the .bin
               int64  document_indices[D]       sequence index where each document starts

The `.bin` file holds the token arrays back to back. Every structural invariant is checked when a
file is opened, so a truncated or corrupt file raises `IndexedDatasetError` naming the file and the
problem instead of returning garbage or crashing later.

Writers (`IndexedDatasetBuilder`) write under a temporary name and rename on `finalize`, so an
interrupted run never leaves a pair of files that looks valid; the temporaries of a killed writer
are removed by the next one (`megatron.core.files.remove_stale_temporaries`).
"""

from __future__ import annotations

import enum
import logging
import os
import struct
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from megatron.core.files import temporary_path

logger = logging.getLogger(__name__)

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
INDEX_HEADER_SIZE = 34  # magic 9 + version 8 + dtype 1 + N 8 + D 8


class IndexedDatasetError(ValueError):
    """A `.bin`/`.idx` pair is missing, truncated or structurally inconsistent."""


class DType(enum.IntEnum):
    """Megatron dtype codes stored at offset 17 of the `.idx` file.

    DeepSpeed's copy of the format uses different meanings for 6-8 (uint16, uint32, uint64);
    files that both must read (curriculum index files) should use codes 1-5 only.
    """

    uint8 = 1
    int8 = 2
    int16 = 3
    int32 = 4
    int64 = 5
    float64 = 6
    float32 = 7
    uint16 = 8

    @classmethod
    def code_of(cls, dtype) -> "DType":
        """The code of a numpy dtype (raises with the supported list when there is none)."""
        name = np.dtype(dtype).name
        try:
            return cls[name]
        except KeyError:
            supported = ", ".join(m.name for m in cls)
            raise IndexedDatasetError(
                f"dtype {name} cannot be stored in an MMIDIDX file; use one of: {supported}"
            ) from None

    def numpy(self) -> np.dtype:
        """The numpy dtype of this code."""
        return np.dtype(self.name)

    @staticmethod
    def optimal_token_dtype(vocab_size: Optional[int]) -> np.dtype:
        """Megatron's choice for token ids: uint16 when the vocabulary fits, else int32."""
        if vocab_size is not None and vocab_size < 65500:
            return np.dtype(np.uint16)
        return np.dtype(np.int32)


def data_file_path(path_prefix: str) -> str:
    """Path of the `.bin` file of a dataset prefix."""
    return path_prefix + ".bin"


def index_file_path(path_prefix: str) -> str:
    """Path of the `.idx` file of a dataset prefix."""
    return path_prefix + ".idx"


class _Index:
    """Parsed and validated `.idx` file (arrays are read-only views of a memory map)."""

    def __init__(self, idx_path: str, bin_size: Optional[int]):
        self.path = idx_path
        file_size = os.path.getsize(idx_path)
        if file_size < INDEX_HEADER_SIZE:
            raise IndexedDatasetError(
                f"{idx_path}: file is {file_size} bytes, shorter than the {INDEX_HEADER_SIZE}-byte "
                "MMIDIDX header (truncated or not an index file); re-run preprocessing"
            )
        with open(idx_path, "rb") as f:
            header = f.read(INDEX_HEADER_SIZE)
        magic = header[:9]
        if magic != INDEX_MAGIC:
            raise IndexedDatasetError(
                f"{idx_path}: bad magic {magic!r}, expected {INDEX_MAGIC!r}; this is not a "
                "Megatron "
                "MMIDIDX index (old 'TNTIDX' cached/lazy indexes are not supported)"
            )
        (version,) = struct.unpack("<Q", header[9:17])
        if version != INDEX_VERSION:
            raise IndexedDatasetError(f"{idx_path}: unsupported version {version}, expected 1")
        code = header[17]
        try:
            self.dtype_code = DType(code)
        except ValueError:
            raise IndexedDatasetError(
                f"{idx_path}: unknown dtype code {code} at offset 17 (valid codes: 1-8)"
            ) from None
        self.dtype = self.dtype_code.numpy()
        n, d = struct.unpack("<QQ", header[18:34])
        expected = INDEX_HEADER_SIZE + 4 * n + 8 * n + 8 * d
        if file_size != expected:
            what = "truncated" if file_size < expected else "has trailing bytes"
            raise IndexedDatasetError(
                f"{idx_path}: file {what}: header says {n} sequences and {d} document boundaries, "
                f"which needs {expected} bytes, but the file has {file_size}"
            )
        self._mmap = np.memmap(idx_path, mode="r", dtype=np.uint8)
        buf = self._mmap
        off = INDEX_HEADER_SIZE
        self.sizes = np.frombuffer(buf, dtype="<i4", count=n, offset=off)
        off += 4 * n
        self.pointers = np.frombuffer(buf, dtype="<i8", count=n, offset=off)
        off += 8 * n
        self.document_indices = np.frombuffer(buf, dtype="<i8", count=d, offset=off)
        self._validate(bin_size)

    def _validate(self, bin_size: Optional[int]) -> None:
        path, n = self.path, len(self.sizes)
        if n and self.sizes.min() < 0:
            bad = int(np.argmax(self.sizes < 0))
            raise IndexedDatasetError(f"{path}: sequence {bad} has negative size {self.sizes[bad]}")
        itemsize = self.dtype.itemsize
        if n:
            ends = self.pointers + self.sizes.astype(np.int64) * itemsize
            if self.pointers[0] != 0 or np.any(self.pointers[1:] != ends[:-1]):
                bad = (
                    0
                    if self.pointers[0] != 0
                    else 1 + int(np.argmax(self.pointers[1:] != ends[:-1]))
                )
                raise IndexedDatasetError(
                    f"{path}: pointer of sequence {bad} is {self.pointers[bad]}, expected "
                    f"{0 if bad == 0 else ends[bad - 1]} (sequences must be contiguous); index is "
                    "corrupt"
                )
            total = int(ends[-1])
        else:
            total = 0
        if bin_size is not None and bin_size != total:
            what = "truncated" if bin_size < total else "larger than the index describes"
            raise IndexedDatasetError(
                f"{path[:-4]}.bin: data file {what}: the index needs {total} bytes "
                f"({int(self.sizes.sum(dtype=np.int64))} tokens of {self.dtype.name}), file has "
                f"{bin_size}"
            )
        doc = self.document_indices
        if (
            len(doc) == 0
            or doc[0] != 0
            or doc[-1] != n
            or (len(doc) > 1 and np.any(np.diff(doc) < 0))
        ):
            raise IndexedDatasetError(
                f"{path}: document indices must start at 0, never decrease and end at the number "
                f"of sequences ({n}); got {len(doc)} entries starting {doc[:3].tolist()} and "
                "ending "
                f"{doc[-3:].tolist()}; index is corrupt"
            )


class IndexedDataset:
    """Read-only view of a `.bin`/`.idx` pair.

    Args:
        path_prefix: path without the `.bin`/`.idx` suffix.
        mmap: memory-map the `.bin` (default). With False the whole file is read into memory.

    Indexing returns a numpy array of one sequence. The arrays are views of a memory map owned by
    this object; keep the object alive while using them (or copy them).
    """

    def __init__(self, path_prefix: str, mmap: bool = True):
        self.path_prefix = path_prefix
        idx_path, bin_path = index_file_path(path_prefix), data_file_path(path_prefix)
        for p in (idx_path, bin_path):
            if not os.path.isfile(p):
                raise IndexedDatasetError(
                    f"{p}: no such file; --data-path takes the prefix without .bin/.idx "
                    f"(got {path_prefix!r}) and both files must exist"
                )
        self._index = _Index(idx_path, os.path.getsize(bin_path))
        if self._index.pointers.size == 0 or os.path.getsize(bin_path) == 0:
            self._bin = np.zeros(0, dtype=np.uint8)
        elif mmap:
            self._bin = np.memmap(bin_path, mode="r", dtype=np.uint8)
        else:
            self._bin = np.fromfile(bin_path, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._index.sizes)

    def __getitem__(self, idx: int) -> np.ndarray:
        if isinstance(idx, slice):
            raise TypeError("IndexedDataset supports integer indices; use get() per sequence")
        return self.get(int(idx))

    def get(self, idx: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        """Tokens `[offset, offset + length)` of sequence `idx` (to its end when length is None)."""
        n = len(self)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"sequence {idx} out of range for {self.path_prefix} ({n} sequences)")
        size = int(self._index.sizes[idx])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(
                f"tokens [{offset}, {offset + length}) out of range for sequence {idx} of size "
                f"{size}"
            )
        item = self.dtype.itemsize
        start = int(self._index.pointers[idx]) + offset * item
        return np.frombuffer(self._bin, dtype=self.dtype, count=length, offset=start)

    @property
    def dtype(self) -> np.dtype:
        """numpy dtype of the tokens."""
        return self._index.dtype

    @property
    def num_tokens(self) -> int:
        """Number of tokens in the `.bin` (all sequences)."""
        return int(self._index.sizes.sum(dtype=np.int64))

    def tokens(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Tokens [start, stop) of the whole `.bin`, sequences back to back (a read-only view of
        the memory map; stop None: to the end)."""
        stop = self.num_tokens if stop is None else min(stop, self.num_tokens)
        start = max(0, min(start, stop))
        item = self.dtype.itemsize
        return np.frombuffer(self._bin, dtype=self.dtype, count=stop - start, offset=start * item)

    def locate_token(self, position: int) -> tuple:
        """(document, sequence, offset in the sequence) of the token at `position` of the
        `.bin`."""
        byte = position * self.dtype.itemsize
        # side="right": the last sequence starting at or before it (past empty sequences, which
        # share their pointer with the next one)
        seq = int(np.searchsorted(self._index.pointers, byte, side="right")) - 1
        offset = (byte - int(self._index.pointers[seq])) // self.dtype.itemsize
        doc = int(np.searchsorted(self._index.document_indices, seq, side="right")) - 1
        return doc, seq, offset

    @property
    def sequence_lengths(self) -> np.ndarray:
        """int32 [N]: tokens per sequence."""
        return self._index.sizes

    sizes = sequence_lengths  # Megatron-DeepSpeed's name

    @property
    def sequence_pointers(self) -> np.ndarray:
        """int64 [N]: byte offset of each sequence in the `.bin`."""
        return self._index.pointers

    @property
    def document_indices(self) -> np.ndarray:
        """int64 [D]: sequence index where each document starts, then N."""
        return self._index.document_indices

    doc_idx = document_indices  # Megatron-DeepSpeed's name

    @property
    def num_documents(self) -> int:
        """Number of documents (D - 1)."""
        return len(self._index.document_indices) - 1

    def document_sequences(self, doc: int) -> range:
        """Sequence ids that make up document `doc`."""
        di = self._index.document_indices
        return range(int(di[doc]), int(di[doc + 1]))

    @staticmethod
    def exists(path_prefix: str) -> bool:
        """Whether both files of the prefix exist."""
        return os.path.isfile(index_file_path(path_prefix)) and os.path.isfile(
            data_file_path(path_prefix)
        )


class IndexedDatasetBuilder:
    """Writes a `.bin`/`.idx` pair; both appear under their final names only on `finalize`.

    Args:
        bin_path: final path of the `.bin` file.
        dtype: numpy dtype of the tokens (see `DType.optimal_token_dtype`).

    Use as a context manager, or call `abort()` on failure, so the temporary files are removed.
    """

    def __init__(self, bin_path: str, dtype=np.int32):
        self.bin_path = bin_path
        self.dtype = np.dtype(dtype)
        DType.code_of(self.dtype)  # fail early on an unsupported dtype
        self._tmp_bin = temporary_path(bin_path)
        self._file = open(self._tmp_bin, "wb")
        self._sizes: list = []
        self._document_indices: list = [0]
        self._closed = False

    def add_item(self, tokens: Union[Sequence[int], np.ndarray, "torch.Tensor"]) -> None:  # noqa: F821
        """Append one sequence."""
        arr = np.asarray(tokens.numpy() if hasattr(tokens, "numpy") else tokens)
        if arr.ndim != 1:
            raise ValueError(f"add_item expects a 1-D sequence, got shape {arr.shape}")
        if arr.dtype != self.dtype:
            if arr.size and np.issubdtype(self.dtype, np.integer):
                info = np.iinfo(self.dtype)
                lo, hi = arr.min(), arr.max()
                if lo < info.min or hi > info.max:
                    raise ValueError(
                        f"token ids in [{lo}, {hi}] do not fit {self.dtype.name}; write with a "
                        "wider dtype (e.g. int32 for vocabularies of 65500 or more)"
                    )
            arr = arr.astype(self.dtype)
        self._file.write(np.ascontiguousarray(arr).tobytes(order="C"))
        self._sizes.append(arr.size)

    def end_document(self) -> None:
        """Close the current document (the sequences added since the last call)."""
        self._document_indices.append(len(self._sizes))

    def add_document(self, tokens, lengths: Iterable[int]) -> None:
        """Append one document given as flat tokens split into sequences of `lengths`."""
        arr = np.asarray(tokens)
        start = 0
        for n in lengths:
            self.add_item(arr[start : start + n])
            start += n
        if start != arr.size:
            raise ValueError(f"lengths sum to {start} but the document has {arr.size} tokens")
        self.end_document()

    def add_index(self, path_prefix: str) -> None:
        """Append every sequence and document of another dataset (must have the same dtype)."""
        other = IndexedDataset(path_prefix)
        if other.dtype != self.dtype:
            raise ValueError(
                f"{path_prefix}: dtype {other.dtype.name} differs from the builder's "
                f"{self.dtype.name}; all merged datasets must share a dtype"
            )
        offset = len(self._sizes)
        self._sizes.extend(other.sequence_lengths.tolist())
        self._document_indices.extend((other.document_indices[1:] + offset).tolist())
        with open(data_file_path(path_prefix), "rb") as f:
            while True:
                chunk = f.read(1 << 26)
                if not chunk:
                    break
                self._file.write(chunk)

    def finalize(self, idx_path: str) -> None:
        """Write the index and move both files to their final names."""
        if self._closed:
            raise RuntimeError("finalize() called twice")
        if self._document_indices[-1] != len(self._sizes):
            self.end_document()  # sequences added after the last end_document form a document
        self._file.close()
        tmp_idx = temporary_path(idx_path)
        try:
            write_index(tmp_idx, self.dtype, self._sizes, self._document_indices)
        except BaseException:
            if os.path.exists(tmp_idx):  # abort() only knows the .bin temporary
                os.remove(tmp_idx)
            raise
        # Drop a previous index first: a crash between the two renames then leaves no index at all
        # (a clear "no such file"), never an old index paired with new data.
        if os.path.exists(idx_path):
            os.remove(idx_path)
        os.replace(self._tmp_bin, self.bin_path)
        os.replace(tmp_idx, idx_path)
        self._closed = True

    def abort(self) -> None:
        """Discard everything written so far."""
        if not self._closed:
            self._file.close()
            if os.path.exists(self._tmp_bin):
                os.remove(self._tmp_bin)
            self._closed = True

    def __enter__(self) -> "IndexedDatasetBuilder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._closed:
            self.abort()


def write_index(idx_path: str, dtype, sizes, document_indices) -> None:
    """Write an `.idx` file for contiguous sequences of `sizes` tokens of `dtype`."""
    dtype = np.dtype(dtype)
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.size and sizes.max() > np.iinfo(np.int32).max:
        raise ValueError(f"a sequence of {sizes.max()} tokens exceeds the int32 size field")
    pointers = np.zeros(sizes.size, dtype="<i8")
    if sizes.size > 1:
        np.cumsum(sizes[:-1] * dtype.itemsize, out=pointers[1:])
    doc = np.asarray(document_indices, dtype="<i8")
    with open(idx_path, "wb") as f:
        f.write(INDEX_MAGIC)
        f.write(struct.pack("<Q", INDEX_VERSION))
        f.write(struct.pack("<B", int(DType.code_of(dtype))))
        f.write(struct.pack("<Q", sizes.size))
        f.write(struct.pack("<Q", doc.size))
        f.write(sizes.astype("<i4").tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(doc.tobytes(order="C"))


def write_array_dataset(path_prefix: str, rows: Sequence[np.ndarray], dtype) -> None:
    """Write a list of 1-D arrays as one-sequence-per-document dataset (atomic)."""
    with IndexedDatasetBuilder(data_file_path(path_prefix), dtype=dtype) as builder:
        for row in rows:
            builder.add_item(row)
            builder.end_document()
        builder.finalize(index_file_path(path_prefix))
