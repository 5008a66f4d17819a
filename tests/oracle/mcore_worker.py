"""Runs inside the megatron-core venv (see mcore_env.py): `python mcore_worker.py JOBS OUT`.

Each job is a dict with "op":
  read:     {"prefix", "out"}: read a dataset with megatron-core's IndexedDataset, save sizes,
            document indices, dtype code, all tokens and some get(offset, length) slices to `out`.
  write:    {"prefix", "dtype", "data"}: write the documents in the .npz `data` (tokens,
            sequence_lengths, document_sequences) with megatron-core's IndexedDatasetBuilder.
  merge:    {"prefixes", "output", "dtype"}: IndexedDatasetBuilder.add_index of each prefix.
  dtypes:   {"vocab_sizes"}: DType codes of all numpy types and optimal_dtype of each size.
  build:    {"kind" ("gpt" or "bert"), "data_path" (a --data-path list), "split", "sizes",
            "seed", "seq_length", "cache", "first", "out"}: build train / valid / test with
            megatron-core's BlendedMegatronDatasetBuilder and save, per split, the document ids of
            each member, the blend's dataset (sample) index and the first `first` samples: GPT
            tokens + labels, BERT the sentence tokens of each sample-index row (not the masked
            item: our BertDataset pairs and masks as Megatron-LM's legacy one does).
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


class _Tokenizer:
    """The few tokenizer attributes megatron-core's dataset configs read."""

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size
        self.eod = vocab_size - 1
        self.cls, self.sep, self.mask, self.pad = 1, 2, 3, 0
        self.inv_vocab = {i: f"t{i}" for i in range(vocab_size)}
        self.unique_identifiers = {"class": "OracleTokenizer", "vocab_size": vocab_size}


def _config(job):
    from megatron.core.datasets.utils import get_blend_from_list

    common = dict(
        random_seed=job["seed"],
        sequence_length=job["seq_length"],
        blend=get_blend_from_list(job["data_path"]),
        split=job["split"],
        path_to_cache=job["cache"],
        tokenizer=_Tokenizer(job.get("vocab_size", 1000)),
    )
    if job["kind"] == "gpt":
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

        return GPTDataset, GPTDatasetConfig(
            **common, reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False
        )
    from megatron.core.datasets.bert_dataset import (
        BERTMaskedWordPieceDataset,
        BERTMaskedWordPieceDatasetConfig,
    )

    return BERTMaskedWordPieceDataset, BERTMaskedWordPieceDatasetConfig(
        **common,
        masking_probability=0.15,
        short_sequence_probability=job.get("short_seq_prob", 0.1),
        masking_max_ngram=3,
        masking_do_full_word=False,
        masking_do_permutation=False,
        masking_use_longer_ngrams=False,
        masking_use_geometric_distribution=False,
        classification_head=True,
    )


def _sample_tokens(kind, dataset, i):
    """GPT: tokens + labels of sample i; BERT: the sentences of sample-index row i."""
    if kind == "gpt":
        item = dataset[i]
        return np.concatenate([np.asarray(item["tokens"])[:1], np.asarray(item["labels"])])
    begin, end, _ = dataset.sample_index[i]
    return np.concatenate([np.asarray(dataset.dataset[j]) for j in range(begin, end)])


def _build(job):
    from megatron.core.datasets.blended_dataset import BlendedDataset
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )

    cls, config = _config(job)
    datasets = BlendedMegatronDatasetBuilder(cls, job["sizes"], lambda: True, config).build()
    arrays, result = {}, []
    for split, ds in zip(("train", "valid", "test"), datasets):
        if ds is None:
            result.append(None)
            continue
        members = ds.datasets if isinstance(ds, BlendedDataset) else [ds]
        for m, member in enumerate(members):
            arrays[f"{split}_docs_{m}"] = np.asarray(member.indices, dtype=np.int64)
            if job["kind"] == "bert":
                arrays[f"{split}_mapping_{m}"] = np.asarray(member.sample_index, dtype=np.int64)
        if isinstance(ds, BlendedDataset):
            arrays[f"{split}_dataset_index"] = np.asarray(ds.dataset_index, dtype=np.int64)
            arrays[f"{split}_dataset_sample_index"] = np.asarray(ds.dataset_sample_index)
        n = min(job["first"], len(ds))
        for i in range(n):
            if isinstance(ds, BlendedDataset):
                member = ds.datasets[int(ds.dataset_index[i])]
                tokens = _sample_tokens(job["kind"], member, int(ds.dataset_sample_index[i]))
            else:
                tokens = _sample_tokens(job["kind"], ds, i)
            arrays[f"{split}_sample_{i}"] = tokens.astype(np.int64)
        result.append({"len": len(ds), "members": len(members), "first": n})
    np.savez(job["out"], **arrays)
    return {"splits": result}


def _init_single_process_group():
    """megatron-core's BERT dataset asks torch.distributed for its rank: a 1-process gloo group
    (an in-memory store: nothing to rendezvous with)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def main():
    jobs = json.load(open(sys.argv[1]))
    if any(job["op"] == "build" for job in jobs):
        _init_single_process_group()
    ops = {"read": _read, "write": _write, "merge": _merge, "dtypes": _dtypes, "build": _build}
    results = [ops[job["op"]](job) for job in jobs]
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
