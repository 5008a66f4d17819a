"""Export a checkpoint (any TP / PP / virtual-PP layout) as a HF transformers folder.

    python tools/checkpoint_to_hf.py --load ckpt --save-dir hf_model [--dtype bf16]

The folder loads with `AutoModelForCausalLM.from_pretrained(hf_model)` (GPT-2 or Llama
architecture; BERT: `AutoModelForPreTraining`) and `AutoTokenizer.from_pretrained(hf_model)`, no
custom code. The mapping and what has no HF equivalent: megatron/training/hf_export.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.training.checkpointing import CheckpointError
from megatron.training.hf_export import DTYPES, export_to_hf

logger = logging.getLogger("checkpoint_to_hf")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--load", required=True, help="Checkpoint folder (a run's --save).")
    parser.add_argument(
        "--save-dir", required=True, help="Folder to create for the HF model (must not exist)."
    )
    parser.add_argument(
        "--iteration",
        type=int,
        default=None,
        help="Iteration to export (default: the one in latest_checkpointed_iteration.txt).",
    )
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default="fp32", help="Dtype of the saved weights."
    )
    parser.add_argument(
        "--true-vocab-size",
        type=int,
        default=None,
        help="The tokenizer's number of ids, when the stored tokenizer files are not readable.",
    )
    parser.add_argument("--skip-tokenizer", action="store_true", help="Write no tokenizer files.")
    parser.add_argument(
        "--no-verify-checkpoint",
        action="store_true",
        help="Do not check the files against their sha256 checksums first.",
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the export; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        export_to_hf(
            args.load,
            args.save_dir,
            iteration=args.iteration,
            dtype=args.dtype,
            true_vocab_size=args.true_vocab_size,
            save_tokenizer=not args.skip_tokenizer,
            verify=not args.no_verify_checkpoint,
        )
    except (ValueError, OSError, CheckpointError) as err:
        print(f"checkpoint_to_hf.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
