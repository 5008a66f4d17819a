"""Import a local HF transformers GPT-2 or Llama folder as a checkpoint of any TP / PP layout.

    python tools/checkpoint_from_hf.py --hf-dir hf_model --save ckpt \\
        --target-tensor-parallel-size 2 --target-pipeline-parallel-size 2

Writes ckpt/release/mp_rank_TT[_PPP]/model_optim_rng.pt (with checksums) and
ckpt/latest_checkpointed_iteration.txt, the tokenizer files under ckpt/tokenizer, and logs the
architecture flags. Continue pretraining with `pretrain_gpt.py --load ckpt` and those flags (or
--use-checkpoint-args) at the same layout; the run starts at iteration 0 with a fresh optimizer.
Nothing is downloaded. The mapping: megatron/training/hf_import.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.training.checkpointing import CheckpointError, stored_args
from megatron.training.hf_import import import_from_hf

logger = logging.getLogger("checkpoint_from_hf")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--hf-dir", required=True, help="Local folder written by save_pretrained (config.json)."
    )
    parser.add_argument("--save", required=True, help="Checkpoint folder to write.")
    parser.add_argument("--target-tensor-parallel-size", type=int, default=1)
    parser.add_argument("--target-pipeline-parallel-size", type=int, default=1)
    parser.add_argument(
        "--target-num-layers-per-virtual-pipeline-stage",
        type=int,
        default=None,
        help="Layers per virtual stage (interleaved schedule); default: no virtual stages.",
    )
    parser.add_argument(
        "--make-vocab-size-divisible-by",
        type=int,
        default=128,
        help="Vocabulary padding of the runs that load the checkpoint (as in pretrain_gpt.py).",
    )
    parser.add_argument(
        "--seq-length",
        type=int,
        default=None,
        help="--seq-length stored with the arguments (default: the model's max positions).",
    )
    return parser


def _flag_line(args) -> str:
    tr, model = args["transformer"], args["model"]
    flags = [
        f"--num-layers {tr['num_layers']}",
        f"--hidden-size {tr['hidden_size']}",
        f"--num-attention-heads {tr['num_attention_heads']}",
        f"--ffn-hidden-size {tr['ffn_hidden_size']}",
        f"--kv-channels {tr['kv_channels']}",
        f"--normalization {tr['normalization']}",
        f"--layernorm-epsilon {tr['layernorm_epsilon']}",
        f"--position-embedding-type {tr['position_embedding_type']}",
        f"--max-position-embeddings {model['max_position_embeddings']}",
        f"--make-vocab-size-divisible-by {model['make_vocab_size_divisible_by']}",
    ]
    flags += ["--swiglu"] if tr["swiglu"] else []
    flags += [] if tr["add_bias_linear"] else ["--disable-bias-linear"]
    flags += (
        ["--untie-embeddings-and-output-weights"]
        if model["untie_embeddings_and_output_weights"]
        else []
    )
    if tr["position_embedding_type"] == "rope":
        flags.append(f"--rotary-base {tr['rotary_base']}")
    tok = {k: v for k, v in (args.get("tokenizer") or {}).items() if v is not None}
    for key in ("tokenizer_type", "vocab_file", "merge_file", "tokenizer_model", "vocab_size"):
        if key in tok:
            flags.append(f"--{key.replace('_', '-')} {tok[key]}")
    return " ".join(flags)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the import; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import_from_hf(
            args.hf_dir,
            args.save,
            args.target_tensor_parallel_size,
            args.target_pipeline_parallel_size,
            args.target_num_layers_per_virtual_pipeline_stage,
            args.make_vocab_size_divisible_by,
            args.seq_length,
        )
    except (ValueError, OSError, CheckpointError) as err:
        print(f"checkpoint_from_hf.py: error: {err}", file=sys.stderr)
        return 2
    logger.info("train on with: --load %s %s", args.save, _flag_line(stored_args(args.save)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
