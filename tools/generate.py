#!/usr/bin/env python
"""Sample text from a GPT checkpoint saved by pretrain_gpt.py (single process, CPU or GPU).

    python tools/generate.py --load runs/quickstart/checkpoints --prompt "It is a truth" \\
        --max-new-tokens 60 --top-k 40 --temperature 0.8

The checkpoint may be of any TP / PP / virtual-PP layout (it is merged into one model here). The
architecture and the tokenizer are read from the checkpoint's stored arguments (the tokenizer
files must still exist at the stored paths, or pass --vocab-file / --merge-file /
--tokenizer-model).
Greedy decoding with --greedy; otherwise temperature sampling restricted by --top-k and/or --top-p.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core.models import GPTModel  # noqa: E402
from megatron.core.transformer import TransformerConfig  # noqa: E402
from megatron.tokenizer import build_stored_tokenizer  # noqa: E402
from megatron.training import checkpointing as ckpt  # noqa: E402
from megatron.training.checkpoint_convert import load_merged  # noqa: E402
from megatron.training.serial_model import build_serial_model  # noqa: E402


def sample_next(
    logits: torch.Tensor, greedy: bool, temperature: float, top_k: int, top_p: float, gen
) -> int:
    """Pick the next id from logits [v] (greedy, or sampled after top-k / top-p filtering)."""
    if greedy:
        return int(logits.argmax())
    logits = logits.float() / max(temperature, 1e-5)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop tokens once the mass before them already reaches top_p (always keep the first).
        drop = probs.cumsum(-1) - probs >= top_p
        logits[order[drop]] = float("-inf")
    return int(torch.multinomial(logits.softmax(-1), 1, generator=gen))


def read_checkpoint(load: str, iteration: Optional[int] = None) -> dict:
    """The state dict of a TP=1, PP=1 GPT checkpoint (its stored arguments under "args"); one
    file read as it is, without merging (main() reads any layout with `load_merged`)."""
    it, release = (iteration, False) if iteration is not None else ckpt.read_tracker(load)
    if it is None:
        raise FileNotFoundError(f"{load}: no {ckpt.TRACKER_FILENAME}; is this a --save folder?")
    path = ckpt.checkpoint_file(load, it, 0, 0, 1, release)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: missing; generation needs a TP=1, PP=1 checkpoint (convert others with "
            "tools/checkpoint_util.py)"
        )
    return ckpt.load_checkpoint_file(path)


def model_from_checkpoint(sd: dict, true_vocab_size: Optional[int] = None) -> GPTModel:
    """The GPT model of a checkpoint's state dict, in eval mode.

    true_vocab_size: the tokenizer's vocabulary size; the padded ids beyond it
    (--make-vocab-size-divisible-by) are then left out of the logits, so they are never sampled.
    """
    args = sd["args"]
    tc = dict(args["transformer"])
    tc["params_dtype"] = torch.float32
    tc.update(
        sequence_parallel=False,
        recompute_granularity=None,
        recompute_method=None,
        recompute_num_layers=None,
    )
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    cfg = TransformerConfig(**{k: v for k, v in tc.items() if k in fields})
    vocab = sd["model"]["embedding.word_embeddings.weight"].shape[0]
    model = GPTModel(
        cfg,
        vocab,
        args["model"]["max_position_embeddings"],
        share_embeddings_and_output_weights=not args["model"][
            "untie_embeddings_and_output_weights"
        ],
        true_vocab_size=true_vocab_size,
    )
    ckpt.restore_model(sd, [model])
    return model.eval()


@torch.no_grad()
def generate(
    model, prompt_ids: List[int], max_new_tokens: int, max_len: int, eod: Optional[int], **sampling
) -> List[int]:
    """Extend prompt_ids token by token (the context is cut to the last max_len tokens)."""
    ids = list(prompt_ids)
    gen = torch.Generator().manual_seed(sampling.pop("seed"))
    for _ in range(max_new_tokens):
        ctx = torch.tensor([ids[-max_len:]])
        pos = torch.arange(ctx.shape[1]).unsqueeze(0)
        logits = model(ctx, pos)[0, -1]
        nxt = sample_next(logits, gen=gen, **sampling)
        ids.append(nxt)
        if eod is not None and nxt == eod:
            break
    return ids


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load", required=True, help="checkpoint folder (the --save of the run)")
    p.add_argument(
        "--ckpt-step", type=int, default=None, help="iteration to load (default: latest)"
    )
    p.add_argument("--prompt", action="append", default=None, help="prompt text (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely (0: all)")
    p.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling mass (0: off)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--vocab-file", default=None)
    p.add_argument("--merge-file", default=None)
    p.add_argument("--tokenizer-model", default=None)
    a = p.parse_args(argv)
    merged = load_merged(a.load, a.ckpt_step)  # any TP / PP layout, merged on this process
    if merged.model_type != "GPT":
        raise SystemExit(f"{a.load} holds a {merged.model_type} checkpoint; generation needs GPT")
    args = merged.args
    files = {k: getattr(a, k) for k in ("vocab_file", "merge_file", "tokenizer_model")}
    tokenizer = build_stored_tokenizer(args["tokenizer"], files)
    # Only the tokenizer's ids are candidates: the padding ids of the embedding are left out.
    model = build_serial_model(merged, tokenizer.vocab_size)
    del merged
    max_len = args["model"]["seq_length"]
    for i, prompt in enumerate(a.prompt or ["It is a truth universally acknowledged"]):
        ids = tokenizer.tokenize(prompt)
        out = generate(
            model,
            ids,
            a.max_new_tokens,
            max_len,
            tokenizer.eod,
            greedy=a.greedy,
            temperature=a.temperature,
            top_k=a.top_k,
            top_p=a.top_p,
            seed=a.seed + i,
        )
        print(f"--- sample {i + 1} ---\n{tokenizer.detokenize(out)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
