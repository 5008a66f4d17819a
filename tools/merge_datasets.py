#!/usr/bin/env python
"""Concatenate indexed datasets (.bin/.idx) into one.

    python tools/merge_datasets.py --input data/parts --output-prefix data/corpus_text_document
    python tools/merge_datasets.py --input a_text_document b_text_document --output-prefix ab

--input takes a folder (every .bin/.idx pair in it, sorted by name) or dataset prefixes (with or
without the .bin/.idx suffix), in the order they are concatenated. All inputs must share a dtype.
When every input has a `<prefix>.token_counts.npy` (written by tools/preprocess_data.py) the
merged output gets their sum. The output appears only when complete (temporary names, rename).
"""

import argparse
import logging
import os
import sys

sys.path.append(os.path.abspath(os.path.join(os.path.dirname(__file__), os.path.pardir)))

from megatron.core.datasets.indexed_dataset import (  # noqa: E402
    IndexedDataset,
    IndexedDatasetError,
)
from megatron.core.datasets.merge import list_dataset_prefixes, merge_datasets


def get_args(argv=None) -> argparse.Namespace:
    """Parse --input and --output-prefix."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--input", nargs="+", required=True, help="a folder of .bin/.idx pairs, or prefixes"
    )
    p.add_argument("--output-prefix", required=True, help="prefix of the merged .bin/.idx")
    return p.parse_args(argv)


def resolve_inputs(inputs, output_prefix: str) -> list:
    """Dataset prefixes named by --input, folders expanded; the output itself is left out."""
    prefixes = []
    for item in inputs:
        if os.path.isdir(item):
            found = list_dataset_prefixes(item)
            out = os.path.abspath(output_prefix)
            prefixes.extend(p for p in found if os.path.abspath(p) != out)
        elif item.endswith((".bin", ".idx")):
            prefixes.append(item[:-4])
        else:
            prefixes.append(item)
    return prefixes


def main(argv=None) -> int:
    """Run the tool; returns the exit status (0 ok, 1 failure)."""
    args = get_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    try:
        prefixes = resolve_inputs(args.input, args.output_prefix)
        counts = merge_datasets(prefixes, args.output_prefix)
        merged = IndexedDataset(args.output_prefix)
    except (ValueError, OSError, IndexedDatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"merged {len(prefixes)} datasets into {args.output_prefix}.bin/.idx: "
        f"{len(merged)} sequences, {merged.num_documents} documents, dtype {merged.dtype.name}; "
        + (f"token counts in {counts}" if counts else "no token counts (not all inputs had one)"),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
