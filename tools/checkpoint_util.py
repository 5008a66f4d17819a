"""Convert a checkpoint to another tensor / pipeline (/ virtual pipeline) parallel layout.

    python tools/checkpoint_util.py --load-dir ckpt/tp2pp2 --save-dir ckpt/tp1pp1 \\
        --target-tensor-parallel-size 1 --target-pipeline-parallel-size 1

    python tools/checkpoint_util.py --load-dir ckpt/tp1pp1 --save-dir ckpt/tp2pp2vpp \\
        --target-tensor-parallel-size 2 --target-pipeline-parallel-size 2 \\
        --target-num-layers-per-virtual-pipeline-stage 2

The latest iteration of --load-dir (or --iteration) is written to --save-dir in Megatron's layout
(iter_XXXXXXX/mp_rank_TT[_PPP]/model_optim_rng.pt plus latest_checkpointed_iteration.txt),
through a temporary folder renamed when complete. Weights, optimizer state, scheduler, counters
and data-efficiency state are kept; the stored arguments get the new layout; per-rank RNG states
are kept only when TP and PP are unchanged (see megatron/training/checkpoint_convert.py). The
data-parallel size needs no conversion: any DP size loads any checkpoint. Train on with
`--load <save-dir>` and the target --tensor-model-parallel-size / --pipeline-model-parallel-size.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from megatron.training.checkpoint_convert import MODEL_TYPES, convert_checkpoint, write_merged
from megatron.training.checkpointing import CheckpointError
from megatron.training.foreign_checkpoint import read_megatron_lm

logger = logging.getLogger("checkpoint_util")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--load-dir", required=True, help="Checkpoint folder to read (a run's --save)."
    )
    parser.add_argument(
        "--save-dir", required=True, help="Folder to write the converted checkpoint to."
    )
    parser.add_argument(
        "--target-tensor-parallel-size",
        type=int,
        required=True,
        help="Tensor-parallel size of the new checkpoint.",
    )
    parser.add_argument(
        "--target-pipeline-parallel-size",
        type=int,
        required=True,
        help="Pipeline-parallel size of the new checkpoint.",
    )
    parser.add_argument(
        "--target-num-layers-per-virtual-pipeline-stage",
        type=int,
        default=None,
        help="Layers per virtual stage (interleaved schedule); default: no virtual stages.",
    )
    parser.add_argument(
        "--iteration",
        type=int,
        default=None,
        help="Iteration to convert (default: the one in latest_checkpointed_iteration.txt).",
    )
    parser.add_argument(
        "--model-type",
        choices=MODEL_TYPES,
        default=None,
        help="GPT or BERT (default: recognised from the parameter names).",
    )
    parser.add_argument(
        "--true-vocab-size",
        type=int,
        default=None,
        help="Unpadded vocabulary size, needed when the padded vocabulary changes with TP "
        "and the tokenizer files in the stored arguments are not readable here.",
    )
    parser.add_argument(
        "--no-optimizer",
        action="store_true",
        help="Leave the optimizer state out (smaller files; the run restarts its moments).",
    )
    parser.add_argument(
        "--no-verify-checkpoint",
        action="store_true",
        help="Do not check the source files against their sha256 checksums first.",
    )
    parser.add_argument(
        "--loader",
        choices=("megatron", "megatron-lm"),
        default="megatron",
        help="megatron: a checkpoint of this framework; megatron-lm: a GPT checkpoint saved by "
        "Megatron-LM with --ckpt-format torch (legacy or megatron-core models; imported without "
        "its optimizer state).",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="With --loader megatron-lm: load files holding Python objects beyond tensors and "
        "the argument Namespace (torch.load weights_only=False; only for files you trust).",
    )
    parser.add_argument(
        "--saver",
        choices=("megatron",),
        default="megatron",
        help="Accepted for compatibility with Megatron launch scripts.",
    )
    return parser


def _import_megatron_lm(args) -> int:
    merged = read_megatron_lm(args.load_dir, args.iteration, args.allow_pickle)
    folder = write_merged(
        merged,
        args.save_dir,
        args.target_tensor_parallel_size,
        args.target_pipeline_parallel_size,
        args.target_num_layers_per_virtual_pipeline_stage,
        true_vocab_size=args.true_vocab_size,
        keep_optimizer=False,
        source=args.load_dir,
    )
    logger.info("wrote %s (no optimizer state: the run starts a fresh optimizer)", folder)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the conversion; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.loader == "megatron-lm":
            return _import_megatron_lm(args)
        folder = convert_checkpoint(
            args.load_dir,
            args.save_dir,
            args.target_tensor_parallel_size,
            args.target_pipeline_parallel_size,
            args.target_num_layers_per_virtual_pipeline_stage,
            iteration=args.iteration,
            model_type=args.model_type,
            true_vocab_size=args.true_vocab_size,
            keep_optimizer=not args.no_optimizer,
            verify=not args.no_verify_checkpoint,
        )
    except (ValueError, OSError, CheckpointError) as err:
        print(f"checkpoint_util.py: error: {err}", file=sys.stderr)
        return 2
    logger.info("wrote %s", folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
