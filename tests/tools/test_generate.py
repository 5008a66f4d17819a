"""tools/generate.py on a checkpoint of pretrain_gpt.py: only the tokenizer's ids are sampled."""

from __future__ import annotations

import pytest
import torch

from megatron.training import checkpointing as ckpt
from tests.integration.test_pretrain_gpt import TINY, run
from tools import generate as generate_tool

TRUE_VOCAB = 61  # NullTokenizer --vocab-size 60 and its end-of-document id; 128 rows padded


@pytest.mark.parametrize("sampling", [["--greedy"], ["--top-k", "5"]], ids=["greedy", "top-k"])
def test_generation_never_samples_a_padding_id(tmp_path, capsys, sampling):
    run(TINY + ["--train-iters", "3", "--save", str(tmp_path)])
    path = ckpt.checkpoint_file(str(tmp_path), 3, 0, 0, 1, False)
    sd = torch.load(path, map_location="cpu", weights_only=False)
    emb = sd["model"]["embedding.word_embeddings.weight"]
    assert emb.shape[0] == 128 and not emb[TRUE_VOCAB:].any()  # padding rows stay zero
    # Padding rows that would win every argmax if they were candidates (tied output weight).
    emb[TRUE_VOCAB:] = 50.0 * emb[:TRUE_VOCAB].abs().max() * emb[: 128 - TRUE_VOCAB].sign()
    ckpt.save_shard(sd, path)  # a checkpoint saved like that (its checksum follows the edit)
    capsys.readouterr()
    argv = ["--load", str(tmp_path), "--prompt", "1 2 3 4", "--max-new-tokens", "12"]
    assert generate_tool.main(argv + sampling) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    ids = [int(t) for t in lines[lines.index("--- sample 1 ---") + 1].split()]
    assert ids[:4] == [1, 2, 3, 4] and len(ids) > 4
    assert max(ids) < TRUE_VOCAB, out
