"""Runs inside the megatron-core venv (see mcore_env.py): `python mcore_worker.py JOBS OUT`.

Each job is a dict with "op":
  read:     {"prefix", "out"}: read a dataset with megatron-core's IndexedDataset, save sizes,
            document indices, dtype code, all tokens and some get(offset, length) slices to `out`.
  write:    {"prefix", "dtype", "data"}: write the documents in the .npz `data` (tokens,
            sequence_lengths, document_sequences) with megatron-core's IndexedDatasetBuilder.
  merge:    {"prefixes", "output", "dtype"}: IndexedDatasetBuilder.add_index of each prefix.
  dtypes:   {"vocab_sizes"}: DType codes of all numpy types and optimal_dtype of each size.
Writes a list with one result dict per job to OUT.json.
"""

import json
import sys

import numpy as np
import torch

import megatron.core.datasets.indexed_dataset as mcore_indexed

assert "site-packages" in mcore_indexed.__file__, mcore_indexed.__file__  # not the project's copy


def _read(job):
    ds = mcore_indexed.IndexedDataset(job["prefix"], multimodal=False, mmap=True)
    # the arrays are views of ds's memory maps: keep ds alive until they are copied
    sizes = np.array(ds.sequence_lengths, dtype=np.int64)
    docs = np.array(ds.document_indices, dtype=np.int64)
    parts = [np.array(ds[i]) for i in range(len(ds))]
    dtype = parts[0].dtype if parts else np.dtype(ds.index.dtype)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype)
    slices = []
    for i in range(len(ds)):
        n = int(sizes[i])
        if n >= 2:
            slices.append(np.array(ds.get(i, offset=1, length=n - 2)).astype(np.int64).tolist())
    np.savez(job["out"], sizes=sizes, document_indices=docs, tokens=tokens)
    code = mcore_indexed.DType.code_from_dtype(ds.index.dtype)
    del parts
    del ds
    return {"len": int(sizes.size), "dtype_code": int(code), "slices": slices}


def _write(job):
    data = np.load(job["data"])
    dtype = np.dtype(job["dtype"])
    wide = np.float64 if dtype.kind == "f" else np.int64
    tokens, lengths, doc_seqs = data["tokens"], data["sequence_lengths"], data["document_sequences"]
    # megatron-core wants the numpy scalar type (np.uint16), not a dtype instance
    builder = mcore_indexed.IndexedDatasetBuilder(job["prefix"] + ".bin", dtype=dtype.type)
    start, seq = 0, 0
    for d, n_seq in enumerate(doc_seqs):
        lens = [int(x) for x in lengths[seq : seq + n_seq]]
        doc = tokens[start : start + sum(lens)]
        if d % 2:  # exercise both ways of adding a document
            builder.add_document(torch.from_numpy(doc.astype(wide)), lens)
        else:
            pos = 0
            for n in lens:
                builder.add_item(torch.from_numpy(doc[pos : pos + n].astype(wide)))
                pos += n
            builder.end_document()
        start += sum(lens)
        seq += int(n_seq)
    builder.finalize(job["prefix"] + ".idx")
    return {}


def _merge(job):
    dtype = np.dtype(job["dtype"]).type
    builder = mcore_indexed.IndexedDatasetBuilder(job["output"] + ".bin", dtype=dtype)
    for prefix in job["prefixes"]:
        builder.add_index(prefix)
    builder.finalize(job["output"] + ".idx")
    return {}


def _dtypes(job):
    names = ["uint8", "int8", "int16", "int32", "int64", "float64", "float32", "uint16"]
    codes = {n: int(mcore_indexed.DType.code_from_dtype(getattr(np, n))) for n in names}
    optimal = [np.dtype(mcore_indexed.DType.optimal_dtype(v)).name for v in job["vocab_sizes"]]
    return {"codes": codes, "optimal": optimal}


def main():
    jobs = json.load(open(sys.argv[1]))
    ops = {"read": _read, "write": _write, "merge": _merge, "dtypes": _dtypes}
    results = [ops[job["op"]](job) for job in jobs]
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
