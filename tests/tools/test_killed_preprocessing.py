"""A preprocessing run killed before it finishes leaves temporaries (a `.bin` of the whole corpus
so far); the next run on the same output removes them and leaves everything else alone."""

import json
import os
import signal
import subprocess
import sys

import numpy as np

from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.files import host_name, temporary_owner
from tools.preprocess_data import main as preprocess_main

# Preprocess, but die by SIGKILL when the outputs are about to be renamed into place.
KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from megatron.core.datasets import indexed_dataset
from tools.preprocess_data import main
indexed_dataset.IndexedDatasetBuilder.finalize = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
main(sys.argv[2:])
"""


def test_next_run_removes_a_killed_runs_temporaries(tmp_path, repo_root, tokenizer_dir):
    corpus = tmp_path / "in.jsonl"
    with open(corpus, "w") as f:
        for i in range(200):
            text = f"Document {i} of a corpus that is tokenized. " * 5
            f.write(json.dumps({"text": text}) + "\n")
    out = tmp_path / "out"
    flags = ["--input", str(corpus), "--output-prefix", str(out), "--append-eod",
             "--tokenizer-type", "GPT2BPETokenizer",
             "--vocab-file", str(tokenizer_dir / "gpt2-vocab.json"),
             "--merge-file", str(tokenizer_dir / "gpt2-merges.txt")]  # fmt: skip
    killed = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(repo_root), *flags])
    assert killed.wait() == -signal.SIGKILL
    left = sorted(n for n in os.listdir(tmp_path) if temporary_owner(n))
    assert any(".bin.tmp-" in n for n in left), left
    assert {temporary_owner(n)[0] for n in left} == {killed.pid}
    assert os.path.getsize(tmp_path / next(n for n in left if ".bin.tmp-" in n)) > 1000
    running = tmp_path / f"out_text_document.bin.tmp-{os.getppid()}-0123abcd-{host_name()}"
    running.write_bytes(b"another run, still writing")
    assert preprocess_main(flags) == 0
    assert sorted(n for n in os.listdir(tmp_path) if temporary_owner(n)) == [running.name]
    assert running.read_bytes() == b"another run, still writing"
    data = IndexedDataset(str(tmp_path / "out_text_document"))
    assert len(data) == 200 and np.all(data.sequence_lengths > 10)
